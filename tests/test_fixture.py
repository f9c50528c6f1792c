"""The bundled fixture VAE is an honest test bed: it loads offline, reconstructs held-out photographs
as its evaluation report says, and gradient-free inversion beats the encoder by >= 3 dB on them."""

import json

import numpy as np
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


def test_to_tensor_maps_8_bit_levels_onto_minus_1_to_1_channels_first():
    from decinv_fast.testbed import to_tensor

    x = to_tensor(np.array([[[0, 128, 255]]], dtype=np.uint8))  # one (1, 1, 3) pixel
    assert x.shape == (3, 1, 1) and x.dtype == torch.float32
    assert x.flatten().tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)


def test_grid_crops_span_the_photograph_and_are_as_many_as_asked():
    from decinv_fast.testbed import grid_crops

    image = np.arange(40 * 60).reshape(40, 60)
    crops = grid_crops(image, 10, 6)  # 2 rows of 3
    assert len(crops) == 6 and all(c.shape == (10, 10) for c in crops)
    assert np.array_equal(crops[0], image[:10, :10]) and np.array_equal(crops[-1], image[-10:, -10:])
    assert len(grid_crops(image, 10, 5)) == 5  # of the same 6 places


def test_heldout_crops_take_the_photographs_in_turn_and_none_is_trained_on():
    from decinv_fast.testbed import HELDOUT_PHOTOS, TRAIN_PHOTOS, grid_crops, load_photo, to_tensor

    assert not set(HELDOUT_PHOTOS) & set(TRAIN_PHOTOS)
    crops = {name: grid_crops(load_photo(name), 32, 2) for name in HELDOUT_PHOTOS}
    expected = [crops["coffee"][0], crops["rocket"][0], crops["camera"][0], crops["coffee"][1]]
    assert torch.equal(heldout_crops(size=32, count=4), to_tensor(np.stack(expected)))


def test_load_fixture_vae_honours_dtype_and_folder_and_is_frozen(tmp_path):
    from decinv_fast.fixture import load_fixture_vae, new_fixture_vae

    half = load_fixture_vae(dtype=torch.float16)
    assert not half.training
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in half.parameters())
    assert {p.device.type for p in load_fixture_vae(device="meta").parameters()} == {"meta"}  # any device, no GPU
    other = new_fixture_vae()  # untrained weights, saved as a training checkpoint is
    other.save_pretrained(tmp_path)
    loaded = load_fixture_vae(folder=tmp_path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in other.state_dict().items())
    with pytest.raises(FileNotFoundError, match="fixture VAE missing at"):
        load_fixture_vae(folder=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dtype must be one of .* got 'fp16'"):
        load_fixture_vae(dtype="fp16")
