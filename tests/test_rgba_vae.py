"""Qwen-Image 2.1's VAE (``AutoencoderKLQwenImage21``): RGBA images, still ones only, encoded as 1-frame videos
``(B, C, 1, h, w)`` in its pipelines' latent space; every way of passing RGBA images, the refusals, every method
equal to the reference, the planner, ``make_target`` and the command line."""

import numpy as np
import pytest
import torch
from PIL import Image
from vae_checks import assert_auto_batches_equal_one_by_one_runs, assert_planned_within_25_percent
from video_vae_models import WAN_STATS, make_vae, tiny_qwen21

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter
from decinv_fast.planner import plan
from decinv_fast.protocol import make_target

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vae():
    return tiny_qwen21()


def rgba(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 4, size, size, generator=g) * 2 - 1


def rgba_uint8(size: int = 32, seed: int = 2) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 4), dtype=np.uint8)
    pixels[:4, :, 3] = 0  # transparent rows: their colour is kept (not premultiplied), as its pipelines keep it
    return pixels


def test_latents_and_decodings_are_the_pipelines(vae):
    """pipeline_qwenimage21: ``_encode_vae_image`` takes ``image.unsqueeze(2)`` and gives ``(mode - mean) / std``;
    decoding undoes that and takes frame 0."""
    x = rgba()
    mean, std = (torch.tensor(WAN_STATS[k]).view(1, -1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
    expected = (vae.encode(x.unsqueeze(2)).latent_dist.mode() - mean) / std
    z = decinv_fast.encode(vae, x)
    assert z.shape == (2, 4, 1, 2, 2)
    torch.testing.assert_close(z, expected)
    decoded = decinv_fast.decode(vae, z)
    assert decoded.shape == (2, 1, 4, 32, 32)  # latents of 1-frame videos decode to 1-frame videos
    torch.testing.assert_close(decoded[:, 0], vae.decode(z * std + mean).sample[:, :, 0])
    adapter = as_adapter(vae)
    assert (adapter.image_channels, adapter.spatial_factor, adapter.frame_step) == (4, 16, 0)


@pytest.mark.parametrize("method,options", [("adam", {}), ("fsm", {"lr": 0.5}), ("km", {"lr": 0.3, "alpha": 0.3}),
                                            ("grad", {})])
def test_every_method_is_the_reference(vae, method, options):
    x = rgba()
    a = as_adapter(vae)
    run = {"adam": reference.adam, "fsm": reference.fsm, "km": reference.km, "grad": reference.gradient_based}[method]
    ref_options = {("rho" if k == "lr" else k): v for k, v in options.items()}
    ref = run(a.encode, lambda z: a.decode(z, 1), x.unsqueeze(2), steps=3, schedule="paper", **ref_options)
    out = decinv_fast.invert(vae, x, method=method, steps=3, schedule="paper", measure_memory=False, **options)
    assert torch.equal(out.latents, ref.latents)


def test_auto_batches_equal_one_by_one_runs(vae):
    assert_auto_batches_equal_one_by_one_runs(vae, rgba())


def test_pil_and_numpy_images_are_read_as_its_pipelines_read_them(vae):
    """An RGBA PIL image and its (H, W, 4) array give the uint8 tensor's latents; an RGB PIL image is made
    opaque (the pipelines' ``convert("RGBA")``); a palette image with transparency keeps it."""
    pixels = rgba_uint8()
    as_tensor = decinv_fast.encode(vae, torch.from_numpy(pixels).permute(2, 0, 1))
    assert torch.equal(decinv_fast.encode(vae, Image.fromarray(pixels, "RGBA")), as_tensor)
    assert torch.equal(decinv_fast.encode(vae, pixels), as_tensor)
    torch.testing.assert_close(decinv_fast.encode(vae, [pixels, pixels]), torch.cat([as_tensor[None]] * 2))
    opaque = pixels.copy()
    opaque[..., 3] = 255
    rgb = Image.fromarray(pixels[..., :3], "RGB")
    assert torch.equal(decinv_fast.encode(vae, rgb), decinv_fast.encode(vae, opaque))
    palette = Image.fromarray(pixels[..., :3], "RGB").quantize(16)
    palette.info["transparency"] = 0  # the palette's first colour is transparent
    converted = np.asarray(palette.convert("RGBA"))
    assert 0 < (converted[..., 3] == 0).sum() < converted[..., 3].size
    expected = decinv_fast.encode(vae, converted)
    assert torch.equal(decinv_fast.encode(vae, palette), expected)


def test_rgb_arrays_and_tensors_are_refused_with_the_way_to_rgba(vae):
    with pytest.raises(ValueError, match=r"images: expected 4 channels, got 3 .*this VAE takes RGBA images "
                                         r"\(Qwen-Image 2.1's\): add an opaque alpha channel"):
        decinv_fast.invert(vae, rgba()[:, :3], steps=1)
    with pytest.raises(ValueError, match=r"images: NumPy images must be \(H, W, 4\), .* \(RGBA: this VAE takes 4 "
                                         r"channels\); got shape \(32, 32, 3\)"):
        decinv_fast.invert(vae, rgba_uint8()[..., :3], steps=1)
    with pytest.raises(ValueError, match=r"expected 3 channels, got 4 .*RGBA ones: this VAE takes RGB, drop the "
                                         r"alpha, images\[\.\.\., :3, :, :\]"):
        decinv_fast.invert(make_vae("qwen"), rgba(), steps=1)  # Qwen-Image's VAE (its config: input_channels)


def test_videos_are_refused_naming_what_it_takes(vae):
    """Its convolutions fold the single frame away: diffusers fails on a second frame; so does invert, first."""
    video = rgba(5).unsqueeze(0)  # (1, 5, 4, H, W)
    with pytest.raises(ValueError, match="images: AutoencoderKLQwenImage21 encodes still images only, as 1-frame "
                                         "videos .* got 5 frames; pass images, \\(B, C, H, W\\)"):
        decinv_fast.invert(vae, video, steps=1)
    with pytest.raises(ValueError, match="shape: AutoencoderKLQwenImage21 encodes still images only"):
        plan(vae, (1, 5, 4, 32, 32), device="cpu")
    one_frame = decinv_fast.invert(vae, video[:, :1], steps=2, measure_memory=False)
    assert torch.equal(one_frame.latents, decinv_fast.invert(vae, video[0, :1], steps=2, measure_memory=False).latents)


@pytest.mark.parametrize("method", ["adam", "auto"])
def test_planner_prediction_within_25_percent_of_measured(vae, method):
    assert_planned_within_25_percent(vae, rgba(4), method)


def test_the_planner_counts_four_channels_and_refuses_three(vae):
    four = plan(vae, (2, 4, 32, 32), dtype=torch.float32, device="cpu", method="anderson", mixing="pixel")
    assert four.input_bytes == 2 * 4 * 32 * 32 * 4
    with pytest.raises(ValueError, match=r"shape must be \(B, 4, H, W\) or \(B, F, 4, H, W\) of positive ints \(this "
                                         r"VAE takes RGBA images\), got \(2, 3, 32, 32\)"):
        plan(vae, (2, 3, 32, 32), device="cpu")
    with torch.device("meta"):
        weightless = type(vae).from_config(vae.config)
    assert plan(weightless, (2, 4, 32, 32), device="cuda").per_chunk == plan(vae, (2, 4, 32, 32),
                                                                             device="cuda").per_chunk


def test_make_target_samples_rgba_targets_in_its_space(vae):
    target = make_target(vae, rgba(), seed=3)
    assert target.latents.shape == (2, 4, 1, 2, 2) and target.images.shape == (2, 1, 4, 32, 32)
    assert not torch.equal(target.latents, decinv_fast.encode(vae, rgba()))  # drawn, not the mode
    result = decinv_fast.invert(vae, target.images, method="auto", steps=3, measure_memory=False)
    assert result.latents.shape == target.latents.shape


def test_the_command_line_reads_rgba_files_for_it(tmp_path, vae):
    """``decinv invert image.png --vae <a saved AutoencoderKLQwenImage21>``: an RGBA PNG keeps its alpha, an
    RGB one is made opaque (as its pipelines convert), gray 16-bit is gray and opaque; the latents are
    ``invert``'s on those pixels; the ``--png`` panel shows them over white."""
    from cli_runs import run_invert

    from decinv_fast import cli_io
    from decinv_fast.cli import image_channels

    vae.save_pretrained(tmp_path / "vae")
    assert (image_channels(str(tmp_path / "vae")), image_channels("fixture")) == (4, 3)
    make_vae("wan22").save_config(tmp_path / "wan22")  # its config's in_channels (12) count 2x2 patches of RGB
    assert image_channels(str(tmp_path / "wan22")) == 3
    pixels = rgba_uint8()
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    latents, meta = run_invert(tmp_path / "rgba.png", tmp_path / "z.st", "--vae", str(tmp_path / "vae"),
                               "--png", str(tmp_path / "panel.png"))
    assert meta["layout"] == "C,f,h,w" and latents.shape == (4, 1, 2, 2)
    assert torch.equal(latents, decinv_fast.invert(vae, pixels, steps=1, measure_memory=False).latents)
    assert Image.open(tmp_path / "panel.png").size == (5 * 128, 128 + 14)  # 32x32 enlarged 4x: the titles fit

    Image.fromarray(pixels[..., :3], "RGB").save(tmp_path / "rgb.png")
    opaque = np.concatenate([pixels[..., :3], np.full_like(pixels[..., :1], 255)], axis=-1)
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgb.png", 4), opaque)
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgb.png"), pixels[..., :3])
    gray = np.random.default_rng(3).integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    read = cli_io.read_image(tmp_path / "gray16.png", 4)
    np.testing.assert_array_equal(read[..., :3], np.repeat(gray[..., None] / np.float32(65535), 3, axis=-1))
    assert (read[..., 3] == 1).all()
    (tmp_path / "batch").mkdir()
    for name in ("rgb.png", "rgba.png"):
        (tmp_path / name).rename(tmp_path / "batch" / name)
    folder, names = cli_io.read_input(tmp_path / "batch", 4)
    assert names == ["rgb.png", "rgba.png"]
    np.testing.assert_array_equal(folder, np.stack([opaque, pixels]))


def test_the_panel_shows_rgba_over_white():
    from decinv_fast.visual import over_white

    pixels = torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.5, 0.0], [1.0, -1.0]]).view(4, 1, 2)  # opaque, transparent
    torch.testing.assert_close(over_white(pixels), torch.tensor([[0.5, 1.0], [1.0, 1.0], [-0.5, 1.0]]).view(3, 1, 2))
