"""``invert_to_noise``'s own arguments: refused before either stage runs, and no infinite residual."""

from __future__ import annotations

import pytest
import torch
from diffusion_models import LinearPatchVae, noise, sd_scheduler, tiny_unet

import decinv_fast
import decinv_fast.diffusion.pipeline as pipeline
from decinv_fast.diffusion import Schedule


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def grid():
    return Schedule.from_scheduler(sd_scheduler(), 3)


@pytest.fixture
def no_stage(monkeypatch):
    """Either stage starting fails the test: the arguments must be refused before."""
    def stage(*args, **kwargs):
        raise AssertionError("a stage ran before the bad argument was refused")

    for name in ("encode", "invert", "bdia_invert_from_z0", "ddim_invert"):
        monkeypatch.setattr(pipeline, name, stage)


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype="float16"), "dtype must be one of"),
    # the fixture VAE's latents of 64x64 images are (2, 4, 8, 8): known before anything runs
    (dict(true_zT=torch.ones(2, 4, 4, 4)), r"true_zT must be a float tensor of the latents' shape \(2, 4, 8, 8\), "
                                            r"got \(2, 4, 4, 4\)"),
    (dict(true_z0=torch.ones(2, 4, 8, 8, dtype=torch.int64)), "true_z0 must be a float tensor"),
    (dict(true_z0=torch.full((2, 4, 8, 8), float("nan"))), "true_z0: 512 value[(]s[)] are NaN or infinite"),
    (dict(true_zT=torch.zeros(2, 4, 8, 8)), r"true_zT is all zeros: its NMSE is normalised by \|\|true_zT\|\|"),
])
def test_bad_arguments_are_refused_before_the_stages(unet, grid, no_stage, kwargs, message):
    vae = decinv_fast.load_fixture_vae()
    with pytest.raises((ValueError, TypeError), match=message):
        decinv_fast.invert_to_noise(vae, unet, grid, torch.zeros(2, 3, 64, 64), method="adam", **kwargs)


def test_a_pair_s_known_answer_is_checked_once_its_latents_are_known(unet, grid):
    """A pair's latent size is unknown until it encodes: the shape is checked then, still naming the argument."""
    vae = LinearPatchVae().pair
    with pytest.raises(ValueError, match=r"true_zT must be a float tensor of the latents' shape \(2, 4, 8, 8\)"):
        decinv_fast.invert_to_noise(vae, unet, grid, torch.zeros(2, 3, 64, 64), method="encoder",
                                    true_zT=noise((2, 4, 4, 4)))


def test_a_mid_grey_batch_has_an_absolute_pixel_residual_not_an_infinite_one(unet, grid):
    vae = decinv_fast.load_fixture_vae()
    grey = torch.zeros(1, 3, 64, 64)  # 0 in [-1, 1]: no norm to divide by
    out = decinv_fast.invert_to_noise(vae, unet, grid, grey, method="encoder")
    expected = float(decinv_fast.decode(vae, out.z0).float().norm())
    assert out.pixel_residual == pytest.approx(expected, rel=1e-6) and 0 < out.pixel_residual < float("inf")
