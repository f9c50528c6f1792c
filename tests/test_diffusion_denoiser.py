"""Denoiser: which guidance scales combine the two branches, what batch the conditions reach the model with, and the
dtype and device of eps."""

from __future__ import annotations

import pytest
import torch
from diffusion_models import noise, sd_scheduler, text_embeddings, tiny_unet

from decinv_fast.diffusion import Denoiser, Schedule, ei_sample


def mean_shift(z, t, encoder_hidden_states):
    """An eps that depends on the embeddings, one value per sample."""
    return torch.tanh(z) + encoder_hidden_states.flatten(1).mean(1).view(-1, 1, 1, 1)


@pytest.mark.parametrize("scale", [0.5, 0.0, -1.0])
def test_guidance_scales_below_one_also_combine_the_branches(scale):
    """Only guidance_scale == 1 is one branch: 0 is the unconditional branch alone, 0.5 and -1 extrapolate."""
    z = noise()
    text, empty = text_embeddings(2)
    guided = Denoiser(mean_shift, encoder_hidden_states=text, negative_encoder_hidden_states=empty,
                      guidance_scale=scale)
    eps_c, eps_u = mean_shift(z, 500, text), mean_shift(z, 500, empty.expand(2, -1, -1))
    torch.testing.assert_close(guided(z, 500), eps_u + scale * (eps_c - eps_u))
    assert guided.guided and guided.calls == 1


def test_guidance_passes_a_condition_of_batch_one_as_it_is():
    """A condition whose first dimension is not the state's batch (1, broadcast by the model) is not repeated for
    the two branches: the batched call of 2B states gets it as it is."""
    seen = []

    def eps(z, t, encoder_hidden_states, bias):
        seen.append(tuple(bias.shape))
        return mean_shift(z, t, encoder_hidden_states) * bias

    z, bias = noise(), torch.full((1, 1, 1, 1), 2.0)
    text, empty = text_embeddings(2)
    guided = Denoiser(eps, encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=3.0,
                      bias=bias)
    out = guided(z, 500)
    assert seen == [(1, 1, 1, 1)]
    eps_c, eps_u = eps(z, 500, text, bias), eps(z, 500, empty.expand(2, -1, -1), bias)
    torch.testing.assert_close(out, eps_u + 3.0 * (eps_c - eps_u))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_an_embedding_of_batch_one_reaches_the_model_with_the_state_batch(scale):
    """``(1, L, D)`` embeddings are expanded to the state's batch ``B`` (``2B`` with guidance), with guidance or
    without, so a model that does not broadcast gets a batch it can use."""
    seen = []

    def eps(z, t, encoder_hidden_states):
        seen.append(tuple(encoder_hidden_states.shape))
        return mean_shift(z, t, encoder_hidden_states)

    text, empty = text_embeddings(1)
    negative = dict(negative_encoder_hidden_states=empty) if scale != 1.0 else {}
    Denoiser(eps, encoder_hidden_states=text, guidance_scale=scale, **negative)(noise(), 500)
    assert seen == [(2 if scale == 1.0 else 4, 5, 8)]


def test_an_eps_in_another_dtype_is_cast_to_the_state_dtype():
    """A callable that answers in float64 for a float32 state: eps, and so every step, stays in float32."""
    grid = Schedule.from_scheduler(sd_scheduler(), 3)
    z_T = noise(dtype=torch.float32)
    assert Denoiser(lambda z, t: torch.tanh(z.double()))(z_T, 500).dtype == torch.float32
    z0 = ei_sample(lambda z, t: torch.tanh(z.double()), grid, z_T)
    assert z0.dtype == torch.float32
    assert torch.equal(z0, ei_sample(lambda z, t: torch.tanh(z.double()).float(), grid, z_T))


def test_a_model_on_another_device_is_named():
    """The state's device is checked against the model's weights before any call (meta weights stand in for a GPU)."""
    grid = Schedule.from_scheduler(sd_scheduler(), 2)
    with pytest.raises(ValueError, match="^z_T is on cpu but the eps model is on meta$"):
        ei_sample(tiny_unet().to("meta"), grid, noise())


def test_an_embedding_batch_other_than_b_or_1_and_a_negative_without_guidance_are_refused():
    """Embeddings have the state's batch or 1 (not some other batch the model might broadcast or cut); a negative
    embedding without guidance would be silently unused."""
    grid = Schedule.from_scheduler(sd_scheduler(), 2)
    text, empty = text_embeddings(3)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(B or 1, L, D\) with B=2, got shape \(3,"):
        ei_sample(mean_shift, grid, noise(), encoder_hidden_states=text)
    with pytest.raises(ValueError, match="negative_encoder_hidden_states is only used with guidance_scale != 1"):
        Denoiser(mean_shift, encoder_hidden_states=text[:2], negative_encoder_hidden_states=empty)
