"""Every accepted VAE kind drops in with the right shapes, and batches equal one-by-one runs."""

import copy
import warnings

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, AutoencoderTiny
from PIL import Image

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter
from decinv_fast.inputs import to_frames
from decinv_fast.protocol import make_target


@pytest.fixture(scope="module")
def tiny_taesd():
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_temporal():
    torch.manual_seed(0)
    return AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
        layers_per_block=1, latent_channels=4,
    ).eval().requires_grad_(False)


def test_autoencoder_kl_matches_pipeline_convention(tiny_kl, images_32):
    z = decinv_fast.encode(tiny_kl, images_32)
    raw = tiny_kl.encode(images_32).latent_dist.mode()
    torch.testing.assert_close(z, (raw - 0.1) * 0.5)
    x = decinv_fast.decode(tiny_kl, z)
    torch.testing.assert_close(x, tiny_kl.decode(z / 0.5 + 0.1).sample)
    out = decinv_fast.invert(tiny_kl, images_32, steps=3)
    assert out.latents.shape == (2, 4, 4, 4)


def test_the_flux_and_sd3_layout_sixteen_channels_without_quant_convs(images_32):
    """FLUX's and SD3's VAEs: 16 latent channels, no quant_conv / post_quant_conv, a shift and a scaling
    (FLUX's values); latents as their pipelines make them, ``(raw - shift) * scaling``, and every method, the
    planner's chunk and the fused update run on them."""
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_kl_config(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                                         scaling_factor=0.3611, shift_factor=0.1159)).eval().requires_grad_(False)
    assert vae.quant_conv is None and vae.post_quant_conv is None
    z = decinv_fast.encode(vae, images_32)
    torch.testing.assert_close(z, (vae.encode(images_32).latent_dist.mode() - 0.1159) * 0.3611)
    torch.testing.assert_close(decinv_fast.decode(vae, z), vae.decode(z / 0.3611 + 0.1159).sample)
    for method in ("adam", "auto", "grad"):
        out = decinv_fast.invert(vae, images_32, method=method, steps=2, chunk_frames="auto", measure_memory=False)
        assert out.latents.shape == (2, 16, 4, 4) and bool(torch.isfinite(out.latents).all())
    planned = decinv_fast.plan(vae, (2, 3, 32, 32), device="cpu", method="adam")
    assert planned.weights_bytes == sum(p.numel() * 4 for p in vae.parameters())
    # one frame per call is not the cheaper here: its small convolutions run PyTorch's native kernels on the
    # CPU, through column buffers (tests/test_plan_accounting.py)
    assert sorted(planned.per_chunk) == [1, 2]
    assert min(planned.per_chunk.values()) > planned.weights_bytes + planned.input_bytes + planned.state_bytes


def test_latents_mean_and_std_as_sdxl_pipelines_use_them(images_32):
    """A config with per-channel latents_mean/latents_std (SDXL-family, e.g. Playground v2.5): the
    pipeline's latents are (mode - mean) * scaling / std, and its decoder input z * std / scaling + mean."""
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    mean, std = [0.1, -0.2, 0.3, 0.4], [2.0, 0.5, 1.0, 4.0]
    vae = AutoencoderKL(**tiny_kl_config(scaling_factor=0.5, latents_mean=mean, latents_std=std)).eval()
    vae.requires_grad_(False)
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    z = decinv_fast.encode(vae, images_32)
    torch.testing.assert_close(z, (vae.encode(images_32).latent_dist.mode() - m) * 0.5 / s)
    torch.testing.assert_close(decinv_fast.decode(vae, z), vae.decode(z * s / 0.5 + m).sample)
    out = decinv_fast.invert(vae, images_32[:1, None].expand(1, 2, 3, 32, 32), method="auto", steps=3)  # a video
    assert out.latents.shape == (1, 2, 4, 4, 4) and bool(torch.isfinite(out.latents).all())
    for bad, match in [(dict(shift_factor=0.1), "both shift_factor and latents_mean"),
                       (dict(latents_std=[1.0, 1.0]), "must hold 4 values"),
                       (dict(latents_std=[1.0, 0.0, 1.0, 1.0]), r"\(std > 0\)")]:
        config = tiny_kl_config(scaling_factor=0.5, latents_mean=mean, latents_std=std)
        with pytest.raises(ValueError, match=match):
            decinv_fast.encode(AutoencoderKL(**{**config, **bad}).eval(), images_32)


def test_a_scaling_without_a_shift_as_sd_pipelines_use_it(images_32):
    """SD 1.x/2.x VAEs set only scaling_factor: latents are ``mode * scaling``, decoded from ``z / scaling``."""
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_kl_config(scaling_factor=0.5)).eval().requires_grad_(False)
    z = decinv_fast.encode(vae, images_32[:1])
    torch.testing.assert_close(z, vae.encode(images_32[:1]).latent_dist.mode() * 0.5)
    torch.testing.assert_close(decinv_fast.decode(vae, z), vae.decode(z / 0.5).sample)


def test_decode_casts_the_latents_to_the_vae_dtype(tiny_kl):
    """fp32 latents given to a fp64 VAE are decoded in fp64, not refused by its first convolution."""
    vae64 = copy.deepcopy(tiny_kl).double()
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    pixels = decinv_fast.decode(vae64, z)
    assert pixels.dtype == torch.float64
    torch.testing.assert_close(pixels, vae64.decode(z.double() / 0.5 + 0.1).sample)


def test_latents_mean_without_latents_std_is_ignored(images_32):
    """The pipelines apply latents_mean and latents_std only as a pair: with one of them the latents are
    the plain ``(mode - shift) * scaling``."""
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    for half in (dict(latents_mean=[0.1, -0.2, 0.3, 0.4]), dict(latents_std=[2.0, 0.5, 1.0, 4.0])):
        vae = AutoencoderKL(**tiny_kl_config(scaling_factor=0.5, shift_factor=0.1, **half)).eval()
        with torch.no_grad():
            expected = (vae.encode(images_32[:1]).latent_dist.mode() - 0.1) * 0.5
        torch.testing.assert_close(decinv_fast.encode(vae, images_32[:1]), expected)


def test_autoencoder_tiny_latents_follow_the_pipeline_convention(images_32):
    """A TAESD with a scaling and shift (as SD3/FLUX-style ones have): latents are
    ``(latents - shift) * scaling`` and decoding undoes it, as for AutoencoderKL."""
    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
        scaling_factor=0.5, shift_factor=0.1,
    ).eval().requires_grad_(False)
    z = decinv_fast.encode(vae, images_32)
    torch.testing.assert_close(z, (vae.encode(images_32).latents - 0.1) * 0.5)
    torch.testing.assert_close(decinv_fast.decode(vae, z), vae.decode(z / 0.5 + 0.1).sample)


def test_autoencoder_tiny(tiny_taesd, images_32):
    out = decinv_fast.invert(tiny_taesd, images_32, steps=3)
    assert out.latents.shape == (2, 4, 4, 4)
    torch.testing.assert_close(decinv_fast.encode(tiny_taesd, images_32), tiny_taesd.encode(images_32).latents)
    assert decinv_fast.decode(tiny_taesd, out.latents).shape == images_32.shape
    with pytest.raises(TypeError, match="latent distribution; AutoencoderTiny has none"):
        make_target(tiny_taesd, images_32)  # the paper's protocol samples z* from the encoder's distribution


def test_temporal_decoder_video(tiny_temporal):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    out = decinv_fast.invert(tiny_temporal, video, steps=3)
    assert out.latents.shape == (2, 3, 4, 4, 4)
    assert out.per_sample_residual.shape == (2,)
    # the temporal decoder sees each video's 3 frames together: compare with the reference on that codec
    a = as_adapter(tiny_temporal)
    ref = reference.adam(a.encode, lambda z: a.decode(z, 3), video.flatten(0, 1), steps=3)
    assert torch.equal(out.latents.flatten(0, 1), ref.latents)
    assert decinv_fast.decode(tiny_temporal, out.latents).shape == video.shape


def test_temporal_decoder_decodes_each_video_s_frames_together(tiny_temporal):
    """``decode`` (and so ``invert``'s D) tells the temporal decoder how many frames form a video."""
    z = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    scaling = tiny_temporal.config.scaling_factor
    expected = tiny_temporal.decode(z[0] / scaling, num_frames=3).sample
    assert not torch.allclose(expected, tiny_temporal.decode(z[0] / scaling, num_frames=1).sample)
    torch.testing.assert_close(decinv_fast.decode(tiny_temporal, z)[0], expected)


def test_temporal_decoder_warns_about_images_without_a_frame_axis(tiny_temporal):
    """Frames passed as a batch of images are decoded one by one: a temporal VAE warns, and points at
    the video layout; a single image and a video do not warn."""
    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.warns(UserWarning, match=r"3 images without a frame axis.*\(1, F, 3, H, W\)") as seen:
        decinv_fast.encode(tiny_temporal, frames)
    assert seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decinv_fast.encode(tiny_temporal, frames[None])
        decinv_fast.encode(tiny_temporal, frames[:1])


def test_temporal_decoder_plans_whole_videos(tiny_temporal):
    """The planner traces a temporal VAE (its time mixer's parameter is made on the CPU even under
    the meta device) and ``chunk_frames="auto"`` picks whole videos, with the unchunked result."""
    plan = decinv_fast.plan(tiny_temporal, (2, 3, 3, 32, 32))
    assert sorted(plan.per_chunk) == [3, 6]
    video = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    auto = decinv_fast.invert(tiny_temporal, video, steps=2, chunk_frames="auto")
    assert torch.equal(auto.latents, decinv_fast.invert(tiny_temporal, video, steps=2).latents)


def test_encode_and_decode_in_chunks(tiny_temporal, tiny_kl):
    """``encode``/``decode`` of a video a few frames per call give the whole call's answer (the
    encoder to conv rounding, as in ``invert``); the temporal decoder takes whole videos only."""
    video = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    for vae, chunk in ((tiny_kl, 2), (tiny_temporal, 3)):
        latents = decinv_fast.encode(vae, video)
        pixels = decinv_fast.decode(vae, latents)
        close = dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(decinv_fast.encode(vae, video, chunk_frames=chunk), latents, **close)
        torch.testing.assert_close(decinv_fast.decode(vae, latents, chunk_frames=chunk), pixels, **close)
    sizes = []  # frames per call the decoder and encoder actually see
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
             for m in (tiny_kl.decoder, tiny_kl.encoder)]
    try:
        decinv_fast.encode(tiny_kl, video, chunk_frames=4)
        decinv_fast.decode(tiny_kl, decinv_fast.encode(tiny_kl, video), chunk_frames=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert sizes == [4, 2, 6, 4, 2]  # chunked encode; whole encode; chunked decode
    with pytest.raises(ValueError, match="whole videos"):
        decinv_fast.decode(tiny_temporal, latents, chunk_frames=2)
    for bad in (0, "auto", 1.5):
        with pytest.raises(ValueError, match="chunk_frames must be a positive int or None"):
            decinv_fast.decode(tiny_kl, latents, chunk_frames=bad)


def test_temporal_decoder_rejects_split_videos(tiny_temporal):
    video = torch.zeros(1, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="whole videos"):
        decinv_fast.invert(tiny_temporal, video, steps=1, chunk_frames=3)


def test_callable_pair(tiny_kl, images_32):
    a = as_adapter(tiny_kl)
    out = decinv_fast.invert((a.encode, lambda z: a.decode(z, 1)), images_32, steps=4)
    ref = decinv_fast.invert(tiny_kl, images_32, steps=4)
    assert torch.equal(out.latents, ref.latents)


def test_pil_numpy_and_uint8_inputs_agree(tiny_kl):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    from_np = decinv_fast.encode(tiny_kl, arr)
    from_pil = decinv_fast.encode(tiny_kl, Image.fromarray(arr))
    from_list = decinv_fast.encode(tiny_kl, [Image.fromarray(arr)] * 2)
    from_u8 = decinv_fast.encode(tiny_kl, torch.from_numpy(arr).permute(2, 0, 1)[None])
    assert from_np.shape == (4, 4, 4)  # one image in, one latent out (no batch dimension)
    assert torch.equal(from_np, from_pil)
    torch.testing.assert_close(from_list[1], from_np)
    torch.testing.assert_close(from_u8[0], from_np)
    batch = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)  # an image pipeline's output_type="np"
    assert decinv_fast.invert(tiny_kl, batch, steps=2).latents.shape == (5, 4, 4, 4)
    assert decinv_fast.invert(tiny_kl, batch[None], steps=2).latents.shape == (1, 5, 4, 4, 4)  # one video


def test_float64_runs_read_pixels_without_float32_rounding(tiny_kl):
    """8-bit and float64 pixels of a float64 run are converted in float64: they were rounded to float32 first."""
    rng = np.random.default_rng(3)
    eight = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    unit = rng.random((2, 32, 32, 3))
    exact = torch.from_numpy(eight).permute(0, 3, 1, 2).double() / 255 * 2 - 1
    exact_unit = torch.from_numpy(unit).permute(0, 3, 1, 2) * 2 - 1
    assert not torch.equal(exact, exact.float().double())  # the float32 route loses bits here
    forms = {"numpy": eight, "pil": [Image.fromarray(a) for a in eight],
             "uint8 tensor": torch.from_numpy(eight).permute(0, 3, 1, 2)}
    for name, images in forms.items():
        pixels = to_frames(images, device=None, dtype=torch.float64, spatial_factor=8, channels=3).pixels
        assert pixels.dtype == torch.float64 and torch.equal(pixels, exact), name
    pixels = to_frames(unit, device=None, dtype=torch.float64, spatial_factor=8, channels=3).pixels
    assert torch.equal(pixels, exact_unit)
    narrow = torch.from_numpy(eight).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # diffusers' float32 throughout
    assert torch.equal(to_frames(eight, device=None, dtype=torch.float32, spatial_factor=8, channels=3).pixels, narrow)
    listed = to_frames(list(eight), device=None, dtype=torch.float64, spatial_factor=8, channels=3).pixels
    assert torch.equal(listed, exact)  # a list of arrays too
    run = dict(steps=1, method="fsm", dtype=torch.float64)
    from_eight, from_exact = (decinv_fast.invert(tiny_kl, images, **run).latents for images in (eight, exact))
    assert torch.equal(from_eight, from_exact)


def test_one_image_tensors_lists_of_arrays_and_gray_pil_images(tiny_kl):
    """A ``(3, H, W)`` tensor is one image (no batch dimension back); a list of ``(H, W, 3)`` arrays is a
    batch of images, not of one-frame videos; a grayscale PIL image is read as RGB."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    one = decinv_fast.encode(tiny_kl, arr)
    torch.testing.assert_close(decinv_fast.encode(tiny_kl, torch.from_numpy(arr).permute(2, 0, 1)), one)
    from_list = decinv_fast.encode(tiny_kl, [arr, arr[::-1]])
    assert from_list.shape == (2, 4, 4, 4)
    torch.testing.assert_close(from_list[0], one)  # batched convolutions round differently
    gray = arr[..., :1].repeat(3, axis=-1)
    assert torch.equal(decinv_fast.encode(tiny_kl, Image.fromarray(gray[..., 0])), decinv_fast.encode(tiny_kl, gray))


def test_numpy_batch_of_images_is_per_image(tiny_kl):
    """(B, H, W, 3), as an image pipeline returns with output_type="np", is B images: each stops and
    mixes on its own (auto), as when inverted one by one; not one video of B frames."""
    rng = np.random.default_rng(3)
    batch = rng.random((3, 32, 32, 3), dtype=np.float32)
    together = decinv_fast.invert(tiny_kl, batch, method="auto", steps=6)
    assert together.latents.shape == (3, 4, 4, 4) and len(together.stop_reason) == 3
    for i in range(3):
        alone = decinv_fast.invert(tiny_kl, batch[i], method="auto", steps=6)
        torch.testing.assert_close(together.latents[i], alone.latents, rtol=1e-4, atol=1e-5)
        assert together.returned_step[i] == alone.returned_step[0]


def test_flipped_numpy_views_are_read(tiny_kl):
    """Flipped or channel-reversed NumPy views have negative strides, which torch.from_numpy refuses."""
    rng = np.random.default_rng(4)
    for image in (rng.random((32, 32, 3), dtype=np.float32), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)):
        for view in (image[::-1], image[:, ::-1], image[..., ::-1]):
            expected = decinv_fast.encode(tiny_kl, np.ascontiguousarray(view))
            assert torch.equal(decinv_fast.encode(tiny_kl, view), expected)


def test_pipeline_output_forms_agree(tiny_temporal):
    """What diffusers pipelines hand back: ``.frames`` as lists of lists of PIL frames (one list per
    video), ``output_type="np"`` floats in [0, 1]; and lists of tensors or arrays. Each is read as the
    same batch of videos (the temporal decoder sees each video's frames together)."""
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, size=(2, 3, 32, 32, 3), dtype=np.uint8)
    tensors = torch.from_numpy(videos).permute(0, 1, 4, 2, 3)  # uint8 (B, F, 3, H, W)
    expected = decinv_fast.invert(tiny_temporal, videos, steps=2).latents
    assert expected.shape == (2, 3, 4, 4, 4)
    forms = {
        "PIL frames per video": [[Image.fromarray(frame) for frame in video] for video in videos],
        "np float in [0, 1]": videos.astype(np.float32) / 255,
        "list of np videos": list(videos),
        "list of uint8 tensors": list(tensors),
        "uint8 tensor": tensors,
    }
    for name, images in forms.items():
        assert torch.equal(decinv_fast.invert(tiny_temporal, images, steps=2).latents, expected), name


@pytest.mark.parametrize("method", ["adam", "fsm", "km", "grad"])
def test_batch_equals_one_by_one(tiny_kl, method):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    kw = dict(method=method, steps=5, lr=0.5 if method in ("fsm", "km") else 0.01)
    batch = decinv_fast.invert(tiny_kl, x, **kw)
    for i in range(3):
        single = decinv_fast.invert(tiny_kl, x[i:i + 1], **kw)
        torch.testing.assert_close(batch.latents[i:i + 1], single.latents, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch.residual_history[:, i:i + 1], single.residual_history, rtol=1e-3, atol=1e-6)


def test_chunked_frames_equal_unchunked(tiny_kl):
    g = torch.Generator().manual_seed(4)
    video = torch.rand(1, 5, 3, 32, 32, generator=g) * 2 - 1
    whole = decinv_fast.invert(tiny_kl, video, steps=4)
    for chunk in (1, 2, 5):
        part = decinv_fast.invert(tiny_kl, video, steps=4, chunk_frames=chunk)
        torch.testing.assert_close(part.latents, whole.latents, rtol=1e-5, atol=1e-6)


def test_user_vae_left_unchanged_by_dtype(tiny_kl, images_32):
    before = {k: v.clone() for k, v in tiny_kl.state_dict().items()}
    out = decinv_fast.invert(tiny_kl, images_32, steps=2, dtype=torch.bfloat16)
    assert out.latents.dtype == torch.bfloat16
    assert next(tiny_kl.parameters()).dtype == torch.float32
    after = tiny_kl.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_temporal_decoder_video_with_auto_in_chunks(tiny_temporal):
    """``method="auto"`` mixes by the pixel residual, gathered chunk by chunk (whole videos each)."""
    g = torch.Generator().manual_seed(1)
    video = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    whole = decinv_fast.invert(tiny_temporal, video, method="auto", steps=4)
    chunked = decinv_fast.invert(tiny_temporal, video, method="auto", steps=4, chunk_frames=3)
    assert whole.latents.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=1e-4, atol=1e-5)
    assert torch.equal(chunked.returned_step, whole.returned_step)


def test_lbfgs_on_the_temporal_decoder_works_per_video(tiny_temporal):
    """grad's L-BFGS on a temporal VAE: one history and one line search per video (its frames decoded
    together), equal to the reference run on each video as one sample."""
    g = torch.Generator().manual_seed(5)
    video = (torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1).double()
    out = decinv_fast.invert(tiny_temporal, video, method="grad", optimizer="lbfgs", steps=4, lr=0.05,
                             dtype=torch.float64, chunk_frames=3)
    a = as_adapter(copy.deepcopy(tiny_temporal).double())
    encode = lambda v: a.encode(v.reshape(-1, 3, 16, 16)).reshape(v.shape[0], -1, 2, 2)  # noqa: E731
    decode = lambda z: a.decode(z.reshape(-1, 4, 2, 2), 3).reshape(z.shape[0], -1, 16, 16)  # noqa: E731
    ref = reference.gradient_based_lbfgs(encode, decode, video.reshape(2, 9, 16, 16), steps=4, lr=0.05)
    torch.testing.assert_close(out.latents.reshape(2, -1), ref.latents.reshape(2, -1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["adam", "anderson", "grad"])
def test_autocast_runs_the_vae_in_half_but_keeps_the_latents_dtype(tiny_kl, images_32, method):
    """Under ``torch.autocast`` (a common wrapper around a whole pipeline) the VAE computes in the
    autocast dtype, as the user asked, while the iteration and the latents stay in the run's dtype."""
    plain = decinv_fast.invert(tiny_kl, images_32, method=method, steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = decinv_fast.invert(tiny_kl, images_32, method=method, steps=2)
        encoded = decinv_fast.encode(tiny_kl, images_32)
        decoded = decinv_fast.decode(tiny_kl, plain.latents)
    assert autocast.latents.dtype == autocast.dtype == torch.float32
    assert encoded.dtype == decoded.dtype == torch.float32
    assert not torch.equal(autocast.latents, plain.latents)  # the VAE did run in bfloat16
    torch.testing.assert_close(autocast.latents, plain.latents, atol=0.1, rtol=0)


def test_an_offloaded_vae_runs_on_its_hooks_execution_device():
    """A pipeline's ``enable_sequential_cpu_offload`` leaves the VAE's weights on the meta device (and
    ``enable_model_cpu_offload`` on the CPU) with accelerate hooks that move them to the execution
    device for each call: invert places its tensors there, as diffusers pipelines do (the hook here is a
    stand-in with accelerate's attribute; accelerate itself is not a dependency)."""
    from types import SimpleNamespace

    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**tiny_kl_config())
    assert as_adapter(vae).device == torch.device("meta")
    vae.decoder.conv_out._hf_hook = SimpleNamespace(execution_device="cpu")
    assert as_adapter(vae).device == torch.device("cpu")
    vae.decoder.conv_out._hf_hook = SimpleNamespace(execution_device=None)  # a hook that does not move weights
    assert as_adapter(vae).device == torch.device("meta")


def test_an_error_inside_the_vae_s_own_tiling_is_noted_as_such(tiny_kl, monkeypatch):
    """diffusers' tiled passes are separate code from the untiled ones: an error raised in one reaches the
    user as it was, with a note naming the VAE's tiling; an untiled VAE's errors get no note."""
    vae = copy.deepcopy(tiny_kl)  # tiles above its sample_size, 32
    x = torch.rand(1, 3, 64, 64) * 2 - 1

    def fails(*args, **kwargs):
        raise ValueError("a tiled pass that fails")

    monkeypatch.setattr(vae, "_tiled_encode", fails)
    monkeypatch.setattr(vae, "tiled_decode", fails)
    vae.enable_tiling()
    with pytest.raises(ValueError, match="a tiled pass that fails") as raised:
        decinv_fast.invert(vae, x, steps=1)
    assert any("AutoencoderKL.encode with the VAE's own tiling on" in note for note in raised.value.__notes__)
    with pytest.raises(ValueError, match="a tiled pass that fails") as raised:
        decinv_fast.decode(vae, torch.zeros(1, 4, 8, 8))
    assert any("AutoencoderKL.decode with the VAE's own tiling on" in note for note in raised.value.__notes__)
    vae.disable_tiling()
    monkeypatch.setattr(vae, "_encode", fails)
    with pytest.raises(ValueError, match="a tiled pass that fails") as raised:
        decinv_fast.invert(vae, x, steps=1)
    assert not getattr(raised.value, "__notes__", None)
