"""The bundled fixture VAE is an honest test bed: it loads offline, reconstructs held-out photographs
as its evaluation report says, and gradient-free inversion beats the encoder by >= 3 dB on them."""

import json

import pytest
import torch

import decinv_fast
from decinv_fast.fixture import fixture_dir
from decinv_fast.protocol import make_target
from decinv_fast.testbed import heldout_crops, reconstruction_psnr


@pytest.fixture(scope="module")
def target(fixture_vae):
    return make_target(fixture_vae, heldout_crops(size=64, count=8), seed=0)


def test_fixture_is_sd_family_and_small(fixture_vae):
    from diffusers import AutoencoderKL

    assert isinstance(fixture_vae, AutoencoderKL)
    assert fixture_vae.config.latent_channels == 4
    assert 2 ** (len(fixture_vae.config.block_out_channels) - 1) == 8
    assert (fixture_dir() / "diffusion_pytorch_model.safetensors").stat().st_size <= 5 * 2**20


def test_reconstruction_psnr_matches_the_report(fixture_vae):
    report = json.loads((fixture_dir() / "evaluation.json").read_text())
    measured = reconstruction_psnr(fixture_vae, heldout_crops(size=report["crop_size"], count=report["heldout_crops"]))
    assert measured == pytest.approx(report["reconstruction_psnr_db"], abs=0.05)


def test_gradient_free_beats_encoder_by_3_db(fixture_vae, target):
    encoder = decinv_fast.nmse_db(decinv_fast.encode(fixture_vae, target.images), target.latents, per_sample=True)
    result = decinv_fast.invert(fixture_vae, target.images, steps=50)
    inverted = decinv_fast.nmse_db(result.latents, target.latents, per_sample=True)
    assert float(encoder.mean() - inverted.mean()) >= 3.0
    assert result.residuals[-1] < 0.5 * result.residuals[0]


def test_gradient_based_baseline_improves(fixture_vae, target):
    encoder = decinv_fast.nmse_db(decinv_fast.encode(fixture_vae, target.images), target.latents)
    result = decinv_fast.invert(fixture_vae, target.images, steps=20, method="grad")
    assert decinv_fast.nmse_db(result.latents, target.latents) < encoder
    assert result.residuals[-1] < result.residuals[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_finish_without_nan(fixture_vae, target, dtype):
    result = decinv_fast.invert(fixture_vae, target.images[:2, :, :32, :32], steps=5, dtype=dtype)
    assert result.latents.dtype == dtype
    assert torch.isfinite(result.latents.float()).all() and torch.isfinite(result.residuals).all()


@pytest.mark.parametrize("size", [0, 4096])
def test_heldout_crops_larger_than_a_photograph_are_refused(size):
    with pytest.raises(ValueError, match="size: crops of"):
        heldout_crops(size, 2)
