"""benchmarks/observability.py: the helpers behind the README's "what the image cannot show" numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kl_config

from benchmarks.observability import (
    decoder_null_channel,
    mean_direction_response,
    null_channel_floor_db,
    null_channel_share,
    visible_nmse_db,
)


@pytest.fixture(scope="module")
def planted():
    """A tiny AutoencoderKL whose decoder ignores the latent channel combination ``u`` exactly."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_kl_config()).eval().requires_grad_(False)
    u = torch.tensor([0.5, -0.5, 0.5, 0.5])
    post = vae.post_quant_conv.weight  # (4, 4, 1, 1): remove u from what reaches conv_in
    post.copy_(torch.einsum("oi,ij->oj", post[:, :, 0, 0], torch.eye(4) - torch.outer(u, u))[:, :, None, None])
    return vae, u


def test_null_channel_is_found_from_the_weights(planted, tiny_kl):
    vae, u = planted
    direction, values = decoder_null_channel(vae)
    assert abs(float(direction @ u)) == pytest.approx(1.0, abs=1e-5)
    assert values == sorted(values, reverse=True) and values[-1] < 1e-5 * values[0]
    unplanted = decoder_null_channel(tiny_kl)[1]
    assert unplanted[-1] > 1e-3 * unplanted[0]  # none planted


def test_floor_and_visible_error_split_the_error_along_the_null_channel(planted):
    u = planted[1]
    gen = torch.Generator().manual_seed(1)
    truth = torch.randn((3, 4, 4, 4), generator=gen)
    along = torch.randn((3, 1, 4, 4), generator=gen)
    other = torch.randn((3, 4, 4, 4), generator=gen)
    other = other - u[None, :, None, None] * torch.einsum("c,nchw->nhw", u, other)[:, None]  # orthogonal to u
    encoded = truth + 0.1 * u[None, :, None, None] * along + 0.3 * other
    expected = 10 * torch.log10((0.1 * along).square().sum((1, 2, 3)) / truth.square().sum((1, 2, 3)))
    assert null_channel_floor_db(u, encoded, truth) == pytest.approx(float(expected.mean()), abs=1e-4)
    on_u, off_u = (0.1 * along).square().sum((1, 2, 3)), (0.3 * other).square().sum((1, 2, 3))
    assert null_channel_share(u, encoded, truth) == pytest.approx(float((on_u / (on_u + off_u)).mean()), rel=1e-5)
    assert null_channel_share(u, truth + other, truth) == pytest.approx(0.0, abs=1e-12)
    visible = 10 * torch.log10(off_u / truth.square().sum((1, 2, 3)))  # the error along u left out
    assert visible_nmse_db(u, encoded, truth) == pytest.approx(float(visible.mean()), abs=1e-4)


def test_mean_direction_response_sees_the_planted_mean(planted, tiny_kl, monkeypatch):
    # a small probe: central differences leave an O(probe²) remainder, and this random decoder is curved
    monkeypatch.setattr("benchmarks.observability.MEAN_PROBE", 0.002)
    latents = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(2))
    response = mean_direction_response(planted[0], latents)
    assert len(response) == 4 and response == sorted(response, reverse=True)
    # the mean along u moves nothing
    unplanted = mean_direction_response(tiny_kl, latents)
    assert response[-1] < 1e-2 * response[0] and response[-1] < 0.1 * unplanted[-1]
