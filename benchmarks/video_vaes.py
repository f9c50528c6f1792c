"""Video VAEs that compress time: accuracy on the trained fixture video VAE, memory of the released ones.

Accuracy: the paper's protocol (``make_target``: ``z*`` drawn from the posterior of held-out clips, ``x``
its 8-bit decoding; mean per-clip NMSE(z) dB) on ``benchmarks/assets/fixture_video_vae``, a tiny
``AutoencoderKLWan`` (8x space, 4x time) trained on moving clips of the photographs, over the 12 held-out
clips of ``testbed_video.heldout_clips`` (9 frames, 64x64; latents ``(12, 4, 3, 8, 8)``), per method:
encoder-only, the paper's Adam (50 steps), fsm (lr 1, 10 and 30 steps), anderson (10), ``auto`` capped at
10 and 50 (it stops itself), ``auto`` with one set of mixing weights per video instead of one per latent frame
(``auto_kwargs(frame_weights=False)``, ``auto`` before 2026-11-24; capped at 10 and 50), ``auto`` with latent
mixing (``options.auto_kwargs(mixing="latent")``, capped at 10: no pixel history, see Memory), the
gradient-based baseline (50), ``auto`` without inverting the clips' first frames alone first
(``auto_kwargs(first_frame_steps=0)``: ``auto`` until it did, later on 2026-11-24; capped at 10 and 50),
``auto`` with their run at its own gains (``auto_kwargs(first_frame_gain=None)``: ``auto`` from then until it
ran them at a gain of 1.5; capped at 10 and 50) and ``auto`` joining their result after 4 steps of the whole run
(``auto_kwargs(first_frame_join=4, second_frame_steps=0)``: without the second run, which the join would
overwrite; capped at 10 and 50), and ``auto`` without its run on the frames of the
first two latent frames (``auto_kwargs(second_frame_steps=0)``: ``auto`` until 2026-11-25; capped at 10 and 50).
Each ``auto-...`` series is today's ``auto`` with that one setting changed.
Longer clips (part ``accuracy-long``; ``--long-only`` reruns them alone into the saved full run): the same
12 clips at 17 frames (latents ``(12, 4, 5, 8, 8)``), ``auto``, ``auto`` joining its first frames' result after 4
steps, ``auto`` with its first frames at gain 3 and ``auto`` without its second run, capped at 10 and 30: where
``auto``'s first-frame settings were chosen against the 9-frame table's verdict (``decinv_fast.first_frame``).
Evaluations count a step on the first frames alone as 1/F of one (F frames), one on the first two latent frames'
5 frames as 5/F (``decinv_fast.first_frame``).
Also the PSNR of ``D(z)`` against ``x``, each clip's NMSE (``per_clip_db``: whether a difference between two
runs is one clip's or spread) and each latent frame's (``per_latent_frame_db``, mean over clips: which frames a
run leaves furthest off).

Memory: ``decinv_fast.plan``'s predictions (bf16, a GPU, all frames in one call) for the released VAE
architectures (diffusers' class defaults are their released configurations, LTX-2's and Wan 2.2's with the
changes of ``RELEASED_CONFIG``, built on the meta device: no weights needed; Qwen-Image's and Qwen-Image
2.1's are image VAEs, of 1-frame videos, RGBA ones for 2.1; FLUX.2's, SANA's and HunyuanImage 2.1's one
image each, the last two as diffusers' conversion scripts configure them) at their pipelines' default sizes, with and
without ``vae.enable_tiling()``, for adam, auto, auto with latent mixing (whose Anderson history holds latents
only, where auto's holds ``memory + 2`` fp32 copies of the video's pixels) and grad; predictions (the planner
is checked against measured peaks on the CPU, tests/test_planner_video.py, and on an H100,
benchmarks/gpu_validation.py).

    python -m benchmarks.video_vaes            # ~20 CPU minutes
    python -m benchmarks.video_vaes --quick    # 3 clips of 5 frames at 32x32, a short video per VAE
"""

from __future__ import annotations

import time

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import arg_parser, replace_predictions, save, start_run
from decinv_fast.adapters import as_adapter
from decinv_fast.options import auto_kwargs
from decinv_fast.protocol import make_target
from decinv_fast.testbed_video import heldout_clips
from decinv_fast.visual import psnr

BENCHMARK = "video_vaes"
FIXTURE = harness.ROOT / "benchmarks" / "assets" / "fixture_video_vae"
# invert's arguments for a name of these tables that is no method: auto with latent mixing is the anderson run it is
INVERTED = {"auto-latent": auto_kwargs(mixing="latent"), "auto-sample-weights": auto_kwargs(frame_weights=False),
            "auto-first-frame-together": auto_kwargs(first_frame_steps=0),
            "auto-first-frame-start": auto_kwargs(first_frame_gain=None),
            "auto-first-frame-join": auto_kwargs(first_frame_join=4, second_frame_steps=0),
            "auto-second-frame-together": auto_kwargs(second_frame_steps=0)}
RUNS = (("adam", dict(method="adam", steps=50)), ("fsm", dict(method="fsm", lr=1.0, steps=10)),
        ("fsm", dict(method="fsm", lr=1.0, steps=30)), ("anderson", dict(method="anderson", steps=10)),
        ("auto", dict(method="auto", steps=10)), ("auto", dict(method="auto", steps=50)),
        ("auto-sample-weights", dict(INVERTED["auto-sample-weights"], steps=10)),
        ("auto-sample-weights", dict(INVERTED["auto-sample-weights"], steps=50)),
        ("auto-first-frame-together", dict(INVERTED["auto-first-frame-together"], steps=10)),
        ("auto-first-frame-together", dict(INVERTED["auto-first-frame-together"], steps=50)),
        ("auto-first-frame-start", dict(INVERTED["auto-first-frame-start"], steps=10)),
        ("auto-first-frame-start", dict(INVERTED["auto-first-frame-start"], steps=50)),
        ("auto-first-frame-join", dict(INVERTED["auto-first-frame-join"], steps=10)),
        ("auto-first-frame-join", dict(INVERTED["auto-first-frame-join"], steps=50)),
        ("auto-second-frame-together", dict(INVERTED["auto-second-frame-together"], steps=10)),
        ("auto-second-frame-together", dict(INVERTED["auto-second-frame-together"], steps=50)),
        ("auto-latent", dict(INVERTED["auto-latent"], steps=10)), ("grad", dict(method="grad", steps=50)))
# longer clips (part "accuracy-long"): where auto's first-frame settings were chosen against the 9-frame table's
LONG_RUNS = tuple((name, dict(options, steps=cap)) for cap in (10, 30) for name, options in (
    ("auto", dict(method="auto")), ("auto-first-frame-join", INVERTED["auto-first-frame-join"]),
    ("auto-first-frame-start", INVERTED["auto-first-frame-start"]),
    ("auto-second-frame-together", INVERTED["auto-second-frame-together"])))
# what plan() is asked for each method of the memory table
PLANNED = {"adam": dict(method="adam"), "auto": dict(method="auto"), "grad": dict(method="grad"),
           "auto-latent": {k: INVERTED["auto-latent"][k] for k in ("method", "memory", "mixing")}}  # what plan() takes
# each released VAE at its pipeline's default video size (frames, height, width)
RELEASED = (("AutoencoderKLWan", "Wan 2.1", (81, 480, 832)), ("AutoencoderKLCogVideoX", "CogVideoX-2b", (49, 480, 720)),
            ("AutoencoderKLHunyuanVideo", "HunyuanVideo", (129, 720, 1280)),
            ("AutoencoderKLLTXVideo", "LTX-Video 0.9", (161, 512, 704)),
            ("AutoencoderKLHunyuanVideo15", "HunyuanVideo 1.5", (121, 480, 848)),
            ("AutoencoderKLMochi", "Mochi 1", (19, 480, 848)),
            ("AutoencoderKLLTX2Video", "LTX-2", (121, 512, 768)),
            ("AutoencoderKLWan", "Wan 2.2 TI2V-5B", (81, 480, 832)),
            ("AutoencoderKLQwenImage", "Qwen-Image", (1, 1024, 1024)),
            ("AutoencoderKLQwenImage21", "Qwen-Image 2.1", (1, 1024, 1024)),
            ("AutoencoderKLMagvit", "EasyAnimate V5.1", (49, 512, 512)),
            ("AutoencoderKLCosmos", "Cosmos 1.0", (121, 704, 1280)),
            # image VAEs (one frame): FLUX.2's (class defaults), SANA's DC-AE at SANA 1.0's and SANA 4K's sizes,
            # HunyuanImage 2.1's
            ("AutoencoderKLFlux2", "FLUX.2", (1, 1024, 1024)), ("AutoencoderDC", "SANA 1.0", (1, 1024, 1024)),
            ("AutoencoderDC", "SANA 4K", (1, 4096, 4096)),
            ("AutoencoderKLHunyuanImage", "HunyuanImage 2.1", (1, 2048, 2048)))
# where the released configuration differs from diffusers' class defaults, by name: as diffusers' conversion
# scripts write them (scripts/convert_ltx2_to_diffusers.py: the class would compute 64x / 16x from LTX-2's
# patch sizes; scripts/convert_wan_to_diffusers.py, Wan 2.2's VAE, whose latent statistics, which set no
# memory, stand as zeros and ones here)
SANA_DC_AE = dict(  # dc-ae-f32c32-sana-1.0, as scripts/convert_dcae_to_diffusers.py builds it
    latent_channels=32, encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3,) * 6,
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=0.41407)
RELEASED_CONFIG = {
    "SANA 1.0": SANA_DC_AE, "SANA 4K": SANA_DC_AE,
    # scripts/convert_hunyuanimage_to_diffusers.py
    "HunyuanImage 2.1": dict(in_channels=3, out_channels=3, latent_channels=64,
                             block_out_channels=(128, 256, 512, 512, 1024, 1024), layers_per_block=2,
                             spatial_compression_ratio=32, sample_size=384, scaling_factor=0.75289),
    "LTX-2": dict(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8),
    "Wan 2.2 TI2V-5B": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                            out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
                            latents_mean=[0.0] * 48, latents_std=[1.0] * 48),
}
# diffusers 0.42's AutoencoderKLHunyuanImage.tiled_encode unpacks a 5-D shape from 4-D images: no tiled row
TILING_FAILS = ("HunyuanImage 2.1",)
CONFIGS = {"full": dict(clips=slice(None), frames=9, size=64, runs=RUNS, released=RELEASED,
                        long=dict(frames=17, runs=LONG_RUNS)),
           "quick": dict(clips=slice(0, 12, 4), frames=5, size=32,
                         runs=RUNS[3:5] + RUNS[6:7] + RUNS[8:9] + RUNS[10:11],
                         released=(("AutoencoderKLWan", "Wan 2.1", (9, 64, 64)),),
                         long=dict(frames=9, runs=LONG_RUNS[:1]))}


def per_latent_frame_db(latents: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """NMSE(z) dB of each latent frame of ``(B, C, f, h, w)`` latents against ``truth``, each clip's frame on its
    own, then the mean over clips (frame 0 decodes to the first pixel frame alone)."""
    error = (latents - truth).double().square().sum((1, 3, 4))
    return (10 * torch.log10(error / truth.double().square().sum((1, 3, 4)))).mean(0).tolist()


def accuracy(cfg: dict, part: str = "accuracy") -> list[dict]:
    """The accuracy runs of ``cfg`` (part ``accuracy``), or of its longer clips (``accuracy-long``)."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(FIXTURE, local_files_only=True, low_cpu_mem_usage=False).eval()
    vae.requires_grad_(False)
    if part == "accuracy-long":
        cfg = dict(cfg, **cfg["long"])
    target = make_target(vae, heldout_clips(cfg["size"], cfg["frames"])[cfg["clips"]], seed=0)
    shape = tuple(target.images.shape)

    def scored(latents: torch.Tensor) -> dict:
        decoded = decinv_fast.decode(vae, latents)
        per_clip = decinv_fast.nmse_db(latents, target.latents, per_sample=True)
        return dict(nmse_db=float(per_clip.mean()), per_clip_db=per_clip.tolist(),
                    per_latent_frame_db=per_latent_frame_db(latents, target.latents),
                    psnr_db=sum(psnr(d, x) for d, x in zip(decoded, target.images, strict=True)) / len(decoded))

    start = time.perf_counter()
    runs = [("encoder-only", dict(scored(decinv_fast.encode(vae, target.images)), evaluations=0.0,
                                   seconds=time.perf_counter() - start))]
    frames, pair = target.images.shape[1], 1 + as_adapter(vae).temporal_compression
    for method, options in cfg["runs"]:
        out = decinv_fast.invert(vae, target.images, measure_memory=False, **options)
        # a step on the first frames alone costs 1 / F of an evaluation of an F-frame clip, one on the first two
        # latent frames' frames (1 + t) / F (decinv_fast.first_frame)
        first = 0.0 if out.first_frame_steps is None else float(out.first_frame_steps.float().mean())
        second = out.second_frame_steps or 0
        evaluations = float(out.stopped_at.float().mean()) + (first + second * pair) / frames
        runs.append((method, dict(scored(out.latents), cap=options["steps"], lr=options.get("lr"),
                                  evaluations=evaluations, first_frame_steps=first, second_frame_steps=second,
                                  seconds=out.seconds)))
    records = []
    for method, metrics in runs:
        metrics.update(part=part, vae="fixture_video_vae", clips=shape[0])
        records.append(harness.record(BENCHMARK, method=method, backend="auto", dtype=torch.float32, shape=shape,
                                      device="cpu", metrics=metrics))
        print(f"{method:12s} cap {metrics.get('cap', '-')!s:>3}: {metrics['nmse_db']:7.2f} dB, PSNR "
              f"{metrics['psnr_db']:5.2f} dB, {metrics['evaluations']:.1f} evaluations, {metrics['seconds']:.1f} s",
              flush=True)
    return records


def memory(cfg: dict) -> list[dict]:
    records = []
    for kind, name, (frames, height, width) in cfg["released"]:
        for tiling in (False, True) if name not in TILING_FAILS else (False,):
            with torch.device("meta"):
                vae = released_vae(kind, name)
            shape = released_shape(vae, frames, height, width)
            vae = torch.nn.Module.to(vae, torch.bfloat16)
            if tiling:
                vae.enable_tiling()
            for method, planned in PLANNED.items():
                p = decinv_fast.plan(vae, shape, dtype=torch.bfloat16, device="cuda", **planned)
                metrics = dict(part="memory", vae=name, kind=kind, tiling=tiling,
                               predicted_total_bytes=p.per_chunk[frames], weights_bytes=p.weights_bytes)
                records.append(harness.planner_record(BENCHMARK, method=method, dtype=torch.bfloat16, shape=shape,
                                                      metrics=metrics))
                print(f"{name:14s} {frames}x{height}x{width} {'tiled' if tiling else 'whole'} {method:11s}: "
                      f"{p.per_chunk[frames] / 2**30:8.2f} GiB", flush=True)
    return records


def released_vae(kind: str, name: str):
    """The released architecture ``name`` of the diffusers VAE class ``kind`` (random weights)."""
    import diffusers

    return getattr(diffusers, kind)(**RELEASED_CONFIG.get(name, {}))


def released_shape(vae, frames: int, height: int, width: int) -> tuple[int, ...]:
    """The pixel shape of one video of ``vae``, in the channels it takes (RGBA for Qwen-Image 2.1's)."""
    return (1, frames, as_adapter(vae).image_channels, height, width)


def main(argv: list[str] | None = None) -> None:
    parser = arg_parser(__doc__, quick="smoke run: its numbers only check the code")
    parser.add_argument("--memory-only", action="store_true",
                        help="recompute only the planner's predictions of the saved full run (after a planner change)")
    parser.add_argument("--long-only", action="store_true",
                        help="rerun only the longer clips' accuracy of the saved full run")
    cfg, args = start_run(CONFIGS, __doc__, argv, parser)
    if args.memory_only or args.long_only:
        part = "memory" if args.memory_only else "accuracy-long"
        new = memory(CONFIGS["full"]) if args.memory_only else accuracy(CONFIGS["full"], part)
        records = replace_predictions(BENCHMARK, lambda r: r["metrics"]["part"] == part, new)
        print(f"wrote {save(BENCHMARK, records, False)}")
        return
    records = accuracy(cfg) + accuracy(cfg, "accuracy-long") + memory(cfg)
    print(f"wrote {save(BENCHMARK, records, args.quick)}")


if __name__ == "__main__":
    main()
