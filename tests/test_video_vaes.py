"""Causal 3-D video VAEs (Wan, Qwen-Image, CogVideoX, HunyuanVideo and 1.5, LTX-Video, LTX-2, Mochi): whole
videos in, ``(B, C, f, h, w)`` latents out in each pipeline's latent space, and every method equal to the
reference run on whole videos."""

import pytest
import torch
from diffusers import AutoencoderKLWan, EDMEulerScheduler
from video_vae_models import KINDS, make_vae, tiny_ltx, video_of

import decinv_fast
from decinv_fast import reference
from decinv_fast.accelerated import gain_on_mean
from decinv_fast.adapters import as_adapter
from decinv_fast.filters import gaussian_blur
from decinv_fast.options import auto_kwargs
from decinv_fast.protocol import make_target
from decinv_fast.visual import quantize

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=list(KINDS))
def video_vae(request):
    return request.param, make_vae(request.param)


def per_video(run, batch: torch.Tensor) -> torch.Tensor:
    """HunyuanVideo 1.5's VAE fails on a batch of two videos (diffusers 0.42): its pipelines call it on one."""
    return torch.cat([run(one) for one in batch.split(1)])


def pipeline_latents(kind: str, vae, rows: torch.Tensor) -> tuple[torch.Tensor, object]:
    """``E(x)`` as each pipeline scales it, and the pipeline's way back to what its decoder takes."""
    raw = per_video(lambda one: vae.encode(one).latent_dist.mode(), rows)
    view = (1, -1, 1, 1, 1)
    if kind in ("wan", "wan22", "qwen"):  # pipeline_wan, pipeline_qwenimage: latents / (1 / std) + mean
        mean = torch.tensor(vae.config.latents_mean).view(view)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(view)
        return (raw - mean) * inverse_std, lambda z: z / inverse_std + mean
    if kind == "mochi" or kind.startswith("ltx"):  # pipeline_mochi (the config's statistics); pipeline_ltx and
        # pipeline_ltx2 (_normalize_latents / _denormalize_latents with the buffers)
        stats = (vae.config.latents_mean, vae.config.latents_std) if kind == "mochi" else (vae.latents_mean,
                                                                                          vae.latents_std)
        mean, std = (torch.as_tensor(v).view(view) for v in stats)
        s = vae.config.scaling_factor
        return (raw - mean) * s / std, lambda z: z * std / s + mean
    if kind == "cosmos":  # pipeline_cosmos_video2world: (latents - mean) * sigma_data / std, per channel and frame,
        # the first f frames of the statistics; its scheduler's (EDMEulerScheduler's) sigma_data
        f = raw.shape[2]
        mean, std = (torch.tensor(v).view(1, vae.config.latent_channels, -1, 1, 1)[:, :, :f]
                     for v in (vae.config.latents_mean, vae.config.latents_std))
        sigma = EDMEulerScheduler().config.sigma_data
        return (raw - mean) * sigma / std, lambda z: z * std / sigma + mean
    s = vae.config.scaling_factor  # CogVideoX, HunyuanVideo (1.5), EasyAnimate: 1 / scaling_factor * latents
    return raw * s, lambda z: z / s


def test_latents_and_decodings_are_the_pipelines(video_vae):
    kind, vae = video_vae
    frames, latent_frames = KINDS[kind]
    video = video_of(frames)
    rows = video.transpose(1, 2).contiguous()  # (B, 3, F, H, W), what the VAE takes
    expected, to_raw = pipeline_latents(kind, vae, rows)
    z = decinv_fast.encode(vae, video)
    assert z.shape == (2, vae.config.get("z_dim", vae.config.get("latent_channels")), latent_frames) + z.shape[-2:]
    torch.testing.assert_close(z, expected)
    # the LTX pipelines' default decode_timestep, 0, one per video
    temb = {"temb": torch.zeros(1)} if kind.endswith("-timestep") else {}
    decoded = per_video(lambda one: vae.decode(one, **temb).sample, to_raw(z))
    torch.testing.assert_close(decinv_fast.decode(vae, z), decoded.transpose(1, 2))
    assert decinv_fast.decode(vae, z).shape == video.shape


@pytest.mark.parametrize("method,options", [("adam", {}), ("fsm", {"lr": 0.5}), ("km", {"lr": 0.3, "alpha": 0.3}),
                                            ("grad", {})])
def test_every_method_is_the_reference_on_whole_videos(video_vae, method, options):
    kind, vae = video_vae
    video = video_of(KINDS[kind][0])
    a = as_adapter(vae)
    rows = video.transpose(1, 2).contiguous()
    run = {"adam": reference.adam, "fsm": reference.fsm, "km": reference.km, "grad": reference.gradient_based}[method]
    ref_options = {("rho" if k == "lr" else k): v for k, v in options.items()}
    ref = run(a.encode, lambda z: a.decode(z, 1), rows, steps=3, schedule="paper", **ref_options)
    out = decinv_fast.invert(vae, video, method=method, steps=3, schedule="paper", measure_memory=False, **options)
    assert torch.equal(out.latents, ref.latents)
    assert out.per_sample_residual.shape == (2,)


def test_auto_batches_and_chunks_whole_videos(video_vae):
    """A batch of two videos equals each run alone, and one video per call equals both at once (up to
    the convolutions' batch-size rounding, which auto's three steps magnify to 3e-5 on Qwen-Image's VAE,
    and on Cosmos's, whose decoder rounds 5e-6 apart in a batch, to 7.7e-4 with auto's weights per latent
    frame, fitted to less data than one set per video, after a step on the first frames alone: 6e-13 in
    fp64); ``chunk_frames`` counts frames
    and must hold whole videos. The first frames' run alone (``first_frame_steps``, 1 step here: auto's 18 on
    these random-weight VAEs, whose decodings no latent matches, grow the latents a hundredfold and the rounding
    with them) and its join into the whole run (at its step 1 here) batch and chunk the same way."""
    kind, vae = video_vae
    frames = KINDS[kind][0]
    video = video_of(frames)
    auto = auto_kwargs(first_frame_steps=1, first_frame_join=1)
    whole = decinv_fast.invert(vae, video, steps=4, measure_memory=False, **auto)
    assert whole.chunk_frames == 2 * frames
    assert (whole.first_frame_steps is not None) == as_adapter(vae).first_frame_alone
    chunked = decinv_fast.invert(vae, video, steps=4, chunk_frames=frames, measure_memory=False, **auto)
    assert chunked.chunk_frames == frames
    atol = 1e-3 if kind == "cosmos" else 5e-5
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=1e-4, atol=atol)
    alone = decinv_fast.invert(vae, video[1:], steps=4, measure_memory=False, **auto)
    torch.testing.assert_close(alone.latents, whole.latents[1:], rtol=1e-4, atol=atol)
    assert alone.returned_step.tolist() == whole.returned_step[1:].tolist()
    with pytest.raises(ValueError, match=f"chunk_frames={frames + 1}: .*whole videos"):
        decinv_fast.invert(vae, video, steps=1, chunk_frames=frames + 1)


def test_decode_chunks_whole_videos():
    vae = make_vae("hunyuan")
    z = decinv_fast.encode(vae, video_of(5))
    whole = decinv_fast.decode(vae, z)
    torch.testing.assert_close(decinv_fast.decode(vae, z, chunk_frames=5), whole, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="chunk_frames=4: AutoencoderKLHunyuanVideo mixes the frames of a video in "
                                         "its causal encoder and decoder, so a chunk must hold whole videos"):
        decinv_fast.decode(vae, z, chunk_frames=4)


@pytest.mark.parametrize("kind", ["wan", "qwen"])
def test_images_are_one_frame_videos(kind):
    """Qwen-Image's pipelines encode an image as ``vae.encode(image.unsqueeze(2))``: ``(N, C, 1, h, w)``."""
    vae = make_vae(kind)
    images = video_of(1)[:, 0]  # (2, 3, 32, 32)
    out = decinv_fast.invert(vae, images, steps=2, measure_memory=False)
    assert out.latents.shape == (2, 4, 1, 4, 4)
    assert torch.equal(out.latents[:, :, 0], decinv_fast.invert(vae, images[:, None], steps=2).latents[:, :, 0])
    one = decinv_fast.invert(vae, images[0], steps=2, measure_memory=False)
    assert one.latents.shape == (4, 1, 4, 4)
    assert decinv_fast.decode(vae, one.latents).shape == (1, 3, 32, 32)  # (F, 3, H, W) of one video


@pytest.mark.parametrize("kind,frames,needed,keep", [("wan", 4, "1 \\+ 4k", 1), ("hunyuan", 7, "1 \\+ 4k", 5),
                                                    ("cogvideox", 5, "1 \\+ 8k", 1), ("ltx", 13, "1 \\+ 8k", 9),
                                                    ("mochi", 9, "1 \\+ 6k", 7), ("hunyuan15", 6, "1 \\+ 4k", 5),
                                                    ("qwen", 3, "1 \\+ 4k", 1), ("ltx2", 8, "1 \\+ 4k", 5)])
def test_a_frame_count_the_vae_cannot_reproduce_is_refused(kind, frames, needed, keep):
    vae = make_vae(kind)
    with pytest.raises(ValueError, match=f"images: .* takes videos of {needed} frames .* got {frames} frames: keep "
                                         f"the first {keep}$"):
        decinv_fast.invert(vae, video_of(frames, batch=1), steps=1)
    with pytest.raises(ValueError, match=f"{needed} frames"):
        decinv_fast.encode(vae, video_of(frames, batch=1))


def test_wan_2_2_takes_three_channel_videos_though_its_config_counts_their_patches():
    """Wan 2.2's VAE patchifies the pixels 2x2 before its encoder: its config's in_channels is 12, its videos have
    3 channels, and its latents are 1/16 of their size."""
    vae = make_vae("wan22")
    assert vae.config.in_channels == 12 and as_adapter(vae).spatial_factor == 16
    assert decinv_fast.invert(vae, video_of(5), steps=1).latents.shape == (2, 4, 2, 2, 2)
    with pytest.raises(ValueError, match="images: expected 3 channels, got 12"):
        decinv_fast.encode(vae, torch.zeros(1, 5, 12, 32, 32))


def test_mochi_takes_three_channel_videos_and_refuses_a_decoder_that_keeps_its_padding_frames():
    """Mochi's config counts its Fourier features in in_channels (15); its pixels have 3 channels. Without
    drop_last_temporal_frames its decoder returns 6 frames per latent frame, never a video it encoded."""
    vae = make_vae("mochi")
    assert vae.config.in_channels == 15
    with pytest.raises(ValueError, match="images: expected 3 channels, got 15"):
        decinv_fast.encode(vae, torch.zeros(1, 7, 15, 32, 32))
    vae.drop_last_temporal_frames = False
    with pytest.raises(ValueError, match="vae: this AutoencoderKLMochi has drop_last_temporal_frames=False"):
        decinv_fast.invert(vae, video_of(7, batch=1), steps=1)


def test_a_noise_injecting_ltx_decoder_decodes_with_one_fixed_draw():
    """LTX-Video 0.9.1+'s decoder adds noise drawn from the global RNG in every call (decoder_inject_noise, its
    released config): invert and decode draw it from a fixed seed, so D is a function (runs repeat, a batch
    equals its videos alone, every method is the reference on that D), and the caller's RNG is left as it was."""
    torch.manual_seed(0)
    vae = tiny_ltx(timestep_conditioning=True, decoder_inject_noise=(True,) * 3 + (False,) * 2).eval()
    vae.requires_grad_(False)
    for name, scale in vae.named_parameters():
        if "per_channel_scale" in name:
            scale.fill_(0.5)  # trained in the released VAE; zero at initialisation
    video = video_of(9)
    z = decinv_fast.encode(vae, video)
    a = as_adapter(vae)
    raw, temb = a.space.to_raw(z), torch.zeros(2)
    assert not torch.equal(vae.decode(raw, temb=temb).sample, vae.decode(raw, temb=temb).sample)  # random
    with torch.random.fork_rng():
        torch.manual_seed(0)
        expected = vae.decode(raw, temb=temb).sample.transpose(1, 2)
    state = torch.get_rng_state()
    assert torch.equal(decinv_fast.decode(vae, z), expected) and torch.equal(decinv_fast.decode(vae, z), expected)
    out = decinv_fast.invert(vae, video, method="fsm", lr=0.5, steps=3, measure_memory=False)
    assert torch.equal(torch.get_rng_state(), state)
    rows = video.transpose(1, 2).contiguous()
    ref = reference.fsm(a.encode, lambda z: a.decode(z, 1), rows, steps=3, rho=0.5, schedule="paper")
    assert torch.equal(out.latents, ref.latents)
    alone = decinv_fast.invert(vae, video[1:], method="fsm", lr=0.5, steps=3, measure_memory=False)
    torch.testing.assert_close(alone.latents, out.latents[1:], rtol=1e-4, atol=5e-5)
    with pytest.raises(ValueError, match="cuda_graphs=True: AutoencoderKLLTXVideo's decoder draws noise"):
        decinv_fast.invert(vae, video, steps=1, cuda_graphs=True)


@pytest.mark.parametrize("kind", ["ltx-timestep", "ltx2-timestep"])
def test_a_decode_timestep_is_the_one_the_decoder_runs_with(kind):
    """LTX pipelines decode with ``decode_timestep`` (0 by default; a caller can pass another):
    ``as_adapter(vae, decode_timestep=t)`` decodes as they do with ``t``, in every function that takes a VAE and
    in the converted copy a run in another dtype makes; a VAE without timestep conditioning refuses it."""
    vae = make_vae(kind)
    video = video_of(KINDS[kind][0])
    at = decinv_fast.as_adapter(vae, decode_timestep=0.05)
    z = decinv_fast.encode(at, video)
    expected = vae.decode(at.space.to_raw(z), temb=torch.full((2,), 0.05)).sample.transpose(1, 2)
    torch.testing.assert_close(decinv_fast.decode(at, z), expected)
    assert not torch.allclose(decinv_fast.decode(vae, z), expected, atol=1e-3)  # timestep 0: another decoder
    rows = video.transpose(1, 2).contiguous()
    ref = reference.fsm(at.encode, lambda z: at.decode(z, 1), rows, steps=2, rho=0.5, schedule="paper")
    out = decinv_fast.invert(at, video, method="fsm", lr=0.5, steps=2, measure_memory=False)
    assert torch.equal(out.latents, ref.latents)
    wide = decinv_fast.invert(at, video, method="fsm", lr=0.5, steps=2, dtype=torch.float64, measure_memory=False)
    torch.testing.assert_close(wide.latents.float(), out.latents, rtol=1e-3, atol=1e-4)
    assert decinv_fast.plan(at, video.shape, device="cpu").per_chunk == decinv_fast.plan(vae, video.shape,
                                                                                          device="cpu").per_chunk
    for bad in (-0.1, float("nan"), "0.05", True):
        with pytest.raises(ValueError, match=r"decode_timestep must be a finite number >= 0"):
            decinv_fast.as_adapter(vae, decode_timestep=bad)
    with pytest.raises(ValueError, match="decode_timestep: AutoencoderKLWan's decoder takes no timestep"):
        decinv_fast.as_adapter(make_vae("wan"), decode_timestep=0.05)
    with pytest.raises(ValueError, match="decode_timestep: AutoencoderKLLTXVideo's decoder takes no timestep"):
        decinv_fast.as_adapter(make_vae("ltx"), decode_timestep=0.05)
    with pytest.raises(ValueError, match="decode_timestep is an option of a diffusers VAE"):
        decinv_fast.as_adapter(at, decode_timestep=0.05)


def test_ltx2_refuses_images_too_small_for_its_reflecting_decoder():
    """LTX-2's decoder pads by reflection, which needs latents of 2x2 or more: smaller images, latents and
    planned shapes are refused naming the size it takes (not a padding error from inside the VAE)."""
    vae = make_vae("ltx2")
    assert vae.config.decoder_spatial_padding_mode == "reflect"
    small = video_of(5, batch=1)[..., :16, :16]
    with pytest.raises(ValueError, match="images: height 16 and width 16: AutoencoderKLLTX2Video decodes latents of "
                                         "at least 2x2, images of at least 32x32 pixels"):
        decinv_fast.invert(vae, small, steps=1)
    with pytest.raises(ValueError, match="shape: height 16 and width 32: .* at least 32x32 pixels"):
        decinv_fast.plan(vae, (1, 5, 3, 16, 32), device="cpu")
    with pytest.raises(ValueError, match="latents of 1x2: this AutoencoderKLLTX2Video decodes latents of at least 2x2"):
        decinv_fast.decode(vae, torch.zeros(1, 8, 2, 1, 2))
    assert decinv_fast.invert(vae, video_of(5, batch=1), steps=1).latents.shape == (1, 8, 2, 2, 2)


def test_planner_latent_layout_and_decoder_shape_errors_name_the_problem():
    """The planner takes these VAEs (tests/test_planner_video.py): ``chunk_frames="auto"`` gives whole videos,
    and ``plan`` refuses a frame count the VAE cannot take, as ``invert`` does."""
    vae = make_vae("wan")
    video = video_of(5)
    auto = decinv_fast.invert(vae, video, steps=1, chunk_frames="auto", measure_memory=False)
    assert auto.chunk_frames in (5, 10)
    with pytest.raises(ValueError, match=r"shape: AutoencoderKLWan takes videos of 1 \+ 4k frames"):
        decinv_fast.plan(vae, (1, 6, 3, 32, 32), device="cpu")
    with pytest.raises(ValueError, match=r"latents must be a \(C, f, h, w\) or \(B, C, f, h, w\) tensor"):
        decinv_fast.decode(vae, torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match=r"latents have 2 channels \(dim -4 of shape \(1, 2, 2, 4, 4\)\)"):
        decinv_fast.decode(vae, torch.zeros(1, 2, 2, 4, 4))


def test_a_decoder_that_changes_the_images_shape_is_named(tiny_kl, images_32):
    a = as_adapter(tiny_kl)
    cropping = (a.encode, lambda z: a.decode(z)[..., 1:, :])  # loses a row: D(z) - x would fail obscurely
    for method in ("fsm", "grad"):
        with pytest.raises(ValueError, match=r"the callables decoder returned shape \(2, 3, 31, 32\) for images of "
                                             r"shape \(2, 3, 32, 32\)"):
            decinv_fast.invert(cropping, images_32, method=method, steps=1)


def test_make_target_samples_whole_videos():
    vae = make_vae("ltx")
    video = video_of(9)
    target = make_target(vae, video, seed=3)
    assert target.latents.shape == (2, 8, 2, 1, 1) and target.images.shape == video.shape
    assert torch.equal(target.images, quantize(decinv_fast.decode(vae, target.latents)))
    mode = decinv_fast.encode(vae, video)
    assert not torch.equal(target.latents, mode)  # drawn from the distribution, not its mode
    assert torch.equal(make_target(vae, video, seed=3).latents, target.latents)


def test_mean_gain_and_residual_blur_act_per_frame_of_a_video():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 3, 5, 5, generator=g)
    gained = gain_on_mean(latents, 3.0)
    for f in range(3):
        torch.testing.assert_close(gained[:, :, f], gain_on_mean(latents[:, :, f], 3.0))
    pixels = torch.randn(2, 3, 4, 16, 16, generator=g)
    blurred = gaussian_blur(pixels, 1.0)
    for f in range(4):
        torch.testing.assert_close(blurred[:, :, f], gaussian_blur(pixels[:, :, f], 1.0))


def test_the_command_line_inverts_an_animated_png_with_a_saved_video_vae(tmp_path, monkeypatch):
    """``decinv invert clip.png --vae <a saved AutoencoderKLWan>``: the latents of the whole clip ``(C, f, h, w)``,
    those of ``invert`` on its frames, and a panel of its first frame."""
    import numpy as np
    from cli_runs import run_invert
    from PIL import Image

    import decinv_fast.visual
    from decinv_fast.demo import bundled_photo, pan_clip

    shown = {}
    real_panel = decinv_fast.visual.panel
    monkeypatch.setattr(decinv_fast.visual, "panel", lambda images: shown.update(images) or real_panel(images))
    make_vae("wan").save_pretrained(tmp_path / "wan")
    frames = pan_clip(bundled_photo(), 5, 32)
    clip = [Image.fromarray(f) for f in frames]
    clip[0].save(tmp_path / "clip.png", save_all=True, append_images=clip[1:])  # lossless: these frames
    latents, meta = run_invert(tmp_path / "clip.png", tmp_path / "z.st", "--vae", str(tmp_path / "wan"),
                               "--png", str(tmp_path / "panel.png"))
    assert latents.shape == (4, 2, 4, 4) and meta["layout"] == "C,f,h,w"
    direct = decinv_fast.invert(make_vae("wan"), np.stack(frames)[None], steps=1, measure_memory=False)
    assert torch.equal(latents, direct.latents[0])
    assert Image.open(tmp_path / "panel.png").size[0] == 5 * 128  # 32x32 enlarged 4x: the titles fit
    vae = make_vae("wan")  # the panel shows the first frame of each whole-video decoding
    torch.testing.assert_close(shown["inverted decoded"], decinv_fast.decode(vae, latents)[0])
    torch.testing.assert_close(shown["encoder decoded"],
                               decinv_fast.decode(vae, decinv_fast.encode(vae, np.stack(frames)[None]))[0, 0])


def test_a_wan_config_whose_latent_statistics_do_not_match_z_dim_is_named():
    """Wan's config counts its latent channels as ``z_dim``; the class defaults' 16 statistics on a 4-channel
    VAE are an error naming the config, not a broadcast failure inside the first step."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    with pytest.raises(ValueError, match="the VAE's config: latents_mean and latents_std must hold 4 values"):
        decinv_fast.encode(vae, video_of(1, batch=1))


def test_cosmos_statistics_per_latent_frame_are_sliced_and_bounded():
    """Cosmos's latents_mean / latents_std hold a value per channel and latent frame (4 x 3 here): a video of
    more latent frames than they cover is refused, as its pipelines cannot take it; a config whose lists do not
    divide by the channels is named."""
    vae = make_vae("cosmos")
    with pytest.raises(ValueError, match="latents: 4 latent frames, but the VAE's latents_mean / latents_std cover 3"):
        decinv_fast.invert(vae, video_of(25, batch=1), steps=1)
    bad = type(vae).from_config({**vae.config, "latents_mean": [0.0] * 10, "latents_std": [1.0] * 10})
    with pytest.raises(ValueError, match="latents_mean and latents_std must hold 4 values per latent frame"):
        decinv_fast.encode(bad, video_of(9, batch=1))


# whose first latent frame is a problem of its own (encoded from the first frame alone, decoded to it alone): the
# causal VAEs; CogVideoX's and HunyuanVideo's normalise over time, LTX-Video's decoder is not causal
FIRST_FRAME_ALONE = {"wan": True, "qwen": True, "wan22": True, "hunyuan15": True, "mochi": True, "magvit": True,
                     "cosmos": True, "ltx2": True, "ltx2-timestep": True, "cogvideox": False, "hunyuan": False,
                     "ltx": False, "ltx-timestep": False}


def first_frame_alone(vae, video: torch.Tensor) -> bool:
    """Whether ``E`` of the video's first frame alone is its first latent frame, and ``D`` of that latent frame
    alone its first frame (to fp32 rounding)."""
    z = decinv_fast.encode(vae, video)
    encoded = decinv_fast.encode(vae, video[:, :1].contiguous())
    decoded, first = decinv_fast.decode(vae, z), decinv_fast.decode(vae, z[:, :, :1].contiguous())
    close = lambda a, b: float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())
    return close(encoded, z[:, :, :1]) and close(first, decoded[:, :1])


def test_the_first_latent_frame_is_a_problem_of_its_own_for_the_causal_vaes(video_vae):
    """What ``first_frame_steps`` (on in ``auto``) stands on: the adapter's ``first_frame_alone`` says whether
    solving the first latent frame on the first frame alone solves it for the whole video, as measured here."""
    kind, vae = video_vae
    torch.manual_seed(0)
    size = 64 if kind.startswith("ltx2") else 32
    video = torch.rand(1, KINDS[kind][0], 3, size, size) * 2 - 1
    assert first_frame_alone(vae, video) == FIRST_FRAME_ALONE[kind] == as_adapter(vae).first_frame_alone


def test_the_first_two_latent_frames_are_a_problem_of_their_own_where_the_first_is(video_vae):
    """What ``second_frame_steps`` (on in ``auto``) stands on, where ``first_frame_alone`` lets it run: a 3-latent-
    frame video's first ``1 + t`` frames encode to its first two latent frames alone, and those decode to them."""
    kind, vae = video_vae
    adapter = as_adapter(vae)
    if not adapter.first_frame_alone:
        pytest.skip("the runs apart do not run for this VAE")
    torch.manual_seed(0)
    size = 64 if kind.startswith("ltx2") else 32
    count = 1 + adapter.temporal_compression
    video = torch.rand(1, 1 + 2 * adapter.temporal_compression, 3, size, size) * 2 - 1
    z = decinv_fast.encode(vae, video)
    assert z.shape[2] == 3
    torch.testing.assert_close(decinv_fast.encode(vae, video[:, :count].contiguous()), z[:, :, :2], rtol=0,
                               atol=1e-4 * float(z.abs().max()))
    decoded = decinv_fast.decode(vae, z)
    torch.testing.assert_close(decinv_fast.decode(vae, z[:, :, :2].contiguous()), decoded[:, :count], rtol=0,
                               atol=1e-4 * float(decoded.abs().max()))


def test_ltx2_as_released_decodes_its_first_frame_from_later_latent_frames():
    """LTX-2's released decoder is not causal (``decoder_causal=False``, benchmarks.video_vaes.RELEASED_CONFIG),
    so the first latent frame is not a problem of its own there, though it is for the causal one above."""
    from video_vae_models import tiny_ltx2

    torch.manual_seed(0)
    video = torch.rand(1, 5, 3, 64, 64) * 2 - 1
    vae = tiny_ltx2(decoder_causal=False)
    assert not first_frame_alone(vae, video) and not as_adapter(vae).first_frame_alone
