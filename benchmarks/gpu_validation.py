"""What only a GPU can show, measured on one CUDA GPU in one run (``scripts/gpu_session.sh`` drives it).

Stages, in this order (``--only`` picks some; each stage's records are saved as soon as it ends):

* ``planner``: ``invert``'s measured CUDA allocator peak (weights included, 2 steps) next to
  ``decinv_fast.plan``'s prediction, SD-2.1 layout, 16 frames of 512x512 in fp16 (the README's GPU
  claim), chunks 1-16, adam, auto and grad, where predicted to fit.
* ``video``: the same for the released video VAE architectures (diffusers' class defaults, random
  weights) at their pipelines' default sizes, bf16, one step: adam whole and tiled, auto whole, and auto with
  latent mixing (``options.auto_kwargs(mixing="latent")``) tiled.
* ``residue``: bytes still allocated after ``invert`` returns (eager, CUDA graphs, auto, grad), three calls each.
* ``kernels``: the fused Adam update, CUDA extension / Triton / eager torch / torch's fused Adam, timed
  with ``triton.testing.do_bench`` (the GPU half of ``benchmarks/kernels.py``).
* ``exact``: the SD-2.1 VAE layout (random weights), one 512x512 image, fp32 with TF32 off, 5 steps:
  ``invert`` with every update backend, with and without CUDA graphs, against the official code's
  control flow (``benchmarks/reference_loop.py``) on the same GPU: max |dz| and ||dz|| / ||z||.
* ``speed``: seconds per inversion step and the rest of a call, from two step counts
  (``t(S2) - t(S1)`` over ``S2 - S1``, best of two each, after a warm-up): fp16 adam on each backend,
  eager and CUDA graphs, fsm, a 16-frame video in chunks of 4, and the official loop in fp32 next to
  ``invert`` in fp32.
* ``probe``: what is live at the peak of one adam step (chunks 1 and 4), from CUDA's memory history,
  next to the planner's count.

Memory comes first: a fresh process holds nothing that the peaks would count.

    python -m benchmarks.gpu_validation                 # on a GPU (~9 minutes on an H100)
    python -m benchmarks.gpu_validation --quick         # smoke run at toy sizes (also on the CPU)
"""

from __future__ import annotations

import time
import traceback

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import VAE_LABELS, arg_parser, quiet, random_images, sd21_vae
from benchmarks.reference_loop import official_loop
from benchmarks.video_vaes import INVERTED, PLANNED, RELEASED, TILING_FAILS, released_shape, released_vae

BENCHMARK = "gpu_validation"
STAGES = ("planner", "video", "residue", "kernels", "exact", "speed", "probe")
CONFIGS = {
    "full": dict(size=512, frames=16, chunks=(1, 2, 4, 8, 16), video_chunk=4, steps=(5, 25), exact_steps=5,
                 released=RELEASED, fit=0.9, half=torch.float16, video_dtype=torch.bfloat16),
    "quick": dict(size=64, frames=4, chunks=(1, 2, 4), video_chunk=2, steps=(1, 3), exact_steps=2,
                  released=(("AutoencoderKLWan", "Wan 2.1", (5, 32, 32)),), fit=0.9,
                  half=torch.float32, video_dtype=torch.float32),  # the CPU's fp16 convolutions are slow
}
GIB = 2**30
# the video stage's runs, most telling first: (enable_tiling, method as video_vaes' memory table names it)
VIDEO_RUNS = ((False, "adam"), (True, "adam"), (False, "auto"), (True, "auto-latent"))


def relative(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.float() - b.float())
    return dict(max_abs_diff=float(d.abs().max()), relative_l2=float(d.norm() / b.float().norm()))


def free_memory(device) -> None:
    harness.sync(device)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def device_bytes(device) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    from decinv_fast.memory import available_ram

    return available_ram()


def residue_stage(cfg: dict, device: str) -> list[dict]:
    """Bytes still allocated after ``invert`` returns and its result is dropped, three calls of each kind
    (a call that leaves memory behind would show it growing, or a constant a pipeline pays forever)."""
    import gc

    if torch.device(device).type != "cuda":
        print("residue: needs a CUDA device, skipped")
        return []
    half = cfg["half"]
    vae = sd21_vae().to(device, half)
    one = random_images((1, 3, cfg["size"], cfg["size"])).to(device, half)
    kinds = {"adam": {}, "adam + CUDA graphs": dict(cuda_graphs=True),
             "adam triton + CUDA graphs": dict(backend="triton", cuda_graphs=True),
             "fsm + CUDA graphs": dict(method="fsm", cuda_graphs=True), "auto": dict(method="auto"),
             "grad": dict(method="grad", keep_best=True)}
    records = []
    for name, kwargs in kinds.items():
        gc.collect()
        free_memory(device)
        before = torch.cuda.memory_allocated(device)
        after = []
        for _ in range(3):
            out = decinv_fast.invert(vae, one, steps=3, **kwargs)
            del out
            gc.collect()
            after.append(torch.cuda.memory_allocated(device) - before)
        records.append(harness.record(BENCHMARK, method=kwargs.get("method", "adam"), backend=name, dtype=half,
                                      shape=one.shape, device=device,
                                      metrics=dict(part="residue", bytes_left_after_each_call=after, steps=3)))
        print(f"residue {name:<28} bytes left after calls 1, 2, 3: {after}", flush=True)
    return records


def kernels_stage(cfg: dict, device: str) -> list[dict]:
    if torch.device(device).type != "cuda":
        print("kernels: needs a CUDA device, skipped")
        return []
    from benchmarks.kernels import gpu_records

    records = gpu_records()
    for r in records:
        r["metrics"]["part"] = "kernels"  # the report's section reads it (kernels.py's own records have none)
        print(f"kernels {r['backend']:<40} {'x'.join(map(str, r['shape'])):<14} "
              f"{r['metrics']['seconds_median'] * 1e6:9.1f} us {r['metrics']['effective_gbps']:8.1f} GB/s", flush=True)
    return records


def exact_stage(cfg: dict, device: str) -> list[dict]:
    vae = sd21_vae().to(device)
    x = random_images((1, 3, cfg["size"], cfg["size"])).to(device)
    steps = cfg["exact_steps"]
    # true fp32 convolutions and matmuls: TF32 (torch's default for cuDNN convolutions) rounds to ~1e-3
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, False
    try:
        return _exact_runs(vae, x, steps, device)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _exact_runs(vae, x: torch.Tensor, steps: int, device: str) -> list[dict]:
    official = official_loop(vae, x, steps=steps, overheads=None)
    records = []
    for backend in ("cuda", "triton", "torch"):
        for graphs in (False, True):
            name = f"invert {backend}" + (" + CUDA graphs" if graphs else "")
            try:
                z = decinv_fast.invert(vae, x, steps=steps, backend=backend, cuda_graphs=graphs,
                                       measure_memory=False).latents
                metrics = dict(part="exact", steps=steps, vae=VAE_LABELS["sd21"], **relative(z, official))
            except Exception as e:  # noqa: BLE001 -- a backend that cannot run here is a result
                metrics = dict(part="exact", steps=steps, error=f"{type(e).__name__}: {e}")
            records.append(harness.record(BENCHMARK, method="adam vs official loop", backend=name,
                                          dtype=torch.float32, shape=x.shape, device=device, metrics=metrics))
            print(f"exact {name:<28} {metrics}", flush=True)
    return records


def step_cost(run, steps: tuple[int, int], device, repeat: int = 2) -> tuple[float, float]:
    """(seconds per step, fixed seconds per call) of ``run(steps)``, from the best of ``repeat`` at each count."""
    s1, s2 = steps
    best = {s: min(harness.wall(lambda s=s: run(s), device)[1] for _ in range(repeat)) for s in (s1, s2)}
    per_step = (best[s2] - best[s1]) / (s2 - s1)
    return per_step, best[s1] - s1 * per_step


def speed_stage(cfg: dict, device: str) -> list[dict]:
    vae32 = sd21_vae().to(device)
    half = cfg["half"]
    vae16 = sd21_vae().to(device, half)
    one = random_images((1, 3, cfg["size"], cfg["size"])).to(device)
    video = random_images((1, cfg["frames"], 3, cfg["size"], cfg["size"])).to(device)
    variants = {  # name: (vae, images, dtype, invert kwargs or None for the official loop)
        "official loop (paper's code), fp32": (vae32, one, torch.float32, None),
        "invert fp32, cuda": (vae32, one, torch.float32, dict(backend="cuda")),
        "invert fp32, cuda + CUDA graphs": (vae32, one, torch.float32, dict(backend="cuda", cuda_graphs=True)),
    }
    for backend in ("cuda", "triton", "torch"):
        variants[f"invert fp16, {backend}"] = (vae16, one, half, dict(backend=backend))
        variants[f"invert fp16, {backend} + CUDA graphs"] = (vae16, one, half,
                                                             dict(backend=backend, cuda_graphs=True))
    variants["invert fp16 fsm, cuda + CUDA graphs"] = (vae16, one, half,
                                                       dict(method="fsm", backend="cuda", cuda_graphs=True))
    chunk = cfg["video_chunk"]
    variants[f"invert fp16 video chunk {chunk}, cuda"] = (vae16, video, half, dict(chunk_frames=chunk))
    variants[f"invert fp16 video chunk {chunk}, cuda + CUDA graphs"] = (vae16, video, half,
                                                                        dict(chunk_frames=chunk, cuda_graphs=True))
    records = []
    for name, (vae, images, dtype, kwargs) in variants.items():
        if kwargs is None:
            run = lambda s, vae=vae, images=images: official_loop(vae, images, steps=s)
        else:
            run = lambda s, vae=vae, images=images, kwargs=kwargs: decinv_fast.invert(
                vae, images, steps=s, measure_memory=False, schedule="constant", **kwargs)
        try:
            run(cfg["steps"][0])  # warm-up: kernels, cuDNN algorithm choice
            per_step, fixed = step_cost(run, cfg["steps"], device)
            metrics = dict(part="speed", seconds_per_step=per_step, fixed_seconds=fixed, step_counts=list(cfg["steps"]),
                           vae=VAE_LABELS["sd21"])
        except Exception as e:  # noqa: BLE001
            metrics = dict(part="speed", error=f"{type(e).__name__}: {e}")
        records.append(harness.record(BENCHMARK, method="adam" if "fsm" not in name else "fsm", backend=name,
                                      dtype=dtype, shape=images.shape, device=device, metrics=metrics))
        print(f"speed {name:<48} " + (f"{1e3 * metrics['seconds_per_step']:8.2f} ms/step, fixed "
                                      f"{1e3 * metrics['fixed_seconds']:7.1f} ms" if "error" not in metrics
                                      else metrics["error"]), flush=True)
    return records


def measured_vs_planned(vae, images, *, dtype, device, chunk, method, steps, fit, planned: dict | None = None,
                        **kwargs) -> dict:
    """One configuration: the planner's prediction (for ``planned``, ``plan``'s method and options; default
    ``method``), then (if it fits the device) the measured peak of ``invert(method=method, **kwargs)``."""
    frames = images.shape[1] if images.dim() == 5 else len(images)
    p = decinv_fast.plan(vae, tuple(images.shape), dtype=dtype, device=torch.device(device).type,
                         chunks=[chunk], **(planned or {"method": method}))
    # invert's peak_bytes: on a GPU the allocator's peak with the weights, on the CPU what the call added
    predicted = p.per_chunk[chunk] if torch.device(device).type == "cuda" else p.added_per_chunk[chunk]
    metrics = dict(predicted_total_bytes=p.per_chunk[chunk], predicted_added_bytes=p.added_per_chunk[chunk],
                   weights_bytes=p.weights_bytes, chunk=chunk, frames=frames, steps=steps)
    if p.per_chunk[chunk] > fit * device_bytes(device):
        return dict(metrics, measured=False, why=f"predicted over {fit:.0%} of the device's memory")
    free_memory(device)
    start = time.perf_counter()
    out = decinv_fast.invert(vae, images, steps=steps, method=method, chunk_frames=chunk, dtype=dtype, **kwargs)
    harness.sync(device)
    metrics.update(measured=True, peak_bytes=out.peak_bytes, seconds=time.perf_counter() - start,
                   measured_over_predicted=out.peak_bytes / predicted if out.peak_bytes else None)
    del out
    free_memory(device)
    return metrics


def sd21_video(cfg: dict, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The SD-2.1 layout and one video of ``cfg["frames"]`` frames, both in ``cfg["half"]`` on ``device``."""
    vae = sd21_vae().to(device, cfg["half"])
    return vae, random_images((1, cfg["frames"], 3, cfg["size"], cfg["size"])).to(device, cfg["half"])


def planner_stage(cfg: dict, device: str) -> list[dict]:
    half = cfg["half"]
    vae, images = sd21_video(cfg, device)
    records = []
    for method in ("adam", "auto", "grad"):
        # random weights overflow grad's fp16 backward; keep_best returns instead of raising
        extra = dict(keep_best=True) if method == "grad" else {}
        for chunk in cfg["chunks"]:
            try:
                metrics = measured_vs_planned(vae, images, dtype=half, device=device, chunk=chunk,
                                              method=method, steps=2, fit=cfg["fit"], **extra)
            except Exception as e:  # noqa: BLE001
                metrics = dict(chunk=chunk, error=f"{type(e).__name__}: {e}")
            records.append(harness.record(BENCHMARK, method=method, backend="planner vs measured",
                                          dtype=half, shape=images.shape, device=device,
                                          metrics=dict(part="planner", vae=VAE_LABELS["sd21"], **metrics)))
            print(f"planner {method:5s} chunk {chunk:>2}: {describe(metrics)}", flush=True)
    return records


def live_at_peak(snapshot: dict) -> tuple[int, list[dict]]:
    """Replay a CUDA memory-history snapshot: the allocated bytes at their peak and the blocks live then."""
    live, total, peak, at_peak = {}, 0, 0, {}
    for event in snapshot["device_traces"][0]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_requested" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, list(at_peak.values())


def where(event: dict) -> str:
    """The innermost Python frame of an allocation in diffusers, decinv_fast or torch.nn (file:line function)."""
    for frame in event.get("frames", []):
        name = frame["filename"]
        if any(part in name for part in ("diffusers", "decinv_fast", "torch/nn")):
            return f"{name.split('site-packages/')[-1]}:{frame['line']} {frame['name']}"
    return "elsewhere"


def probe_stage(cfg: dict, device: str) -> list[dict]:
    """What is live at the peak of one adam step (chunks 1 and 4) next to what the planner counts."""
    if torch.device(device).type != "cuda":
        print("probe: needs a CUDA device, skipped")
        return []
    half = cfg["half"]
    vae, images = sd21_video(cfg, device)
    records = []
    for chunk in (1, 4):
        p = decinv_fast.plan(vae, tuple(images.shape), dtype=half, device="cuda", chunks=[chunk])
        free_memory(device)
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        out = decinv_fast.invert(vae, images, steps=1, chunk_frames=chunk)
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        peak, blocks = live_at_peak(snapshot)
        groups: dict[str, list[int]] = {}
        for b in blocks:
            groups.setdefault(where(b), []).append(b["size"])
        top = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:25]
        metrics = dict(part="probe", chunk=chunk, peak_bytes=out.peak_bytes, replayed_peak_bytes=peak,
                       predicted_total_bytes=p.per_chunk[chunk], weights_bytes=p.weights_bytes,
                       input_bytes=p.input_bytes, state_bytes=p.state_bytes, predicted_transient=p.transient[chunk],
                       live_at_peak=[dict(where=w, count=len(sizes), bytes=sum(sizes), largest=max(sizes))
                                     for w, sizes in top])
        records.append(harness.record(BENCHMARK, method="adam", backend="memory at the peak", dtype=half,
                                      shape=images.shape, device=device, metrics=metrics))
        print(f"probe chunk {chunk}: peak {out.peak_bytes / GIB:.3f} GiB (replayed {peak / GIB:.3f}), predicted "
              f"{p.per_chunk[chunk] / GIB:.3f} (transient {p.transient[chunk] / GIB:.3f})", flush=True)
        for g in metrics["live_at_peak"]:
            print(f"   {g['bytes'] / 2**20:9.1f} MiB in {g['count']:4d} (largest {g['largest'] / 2**20:7.1f}) "
                  f"{g['where']}")
        del out
    return records


def describe(m: dict) -> str:
    if "error" in m:
        return m["error"]
    text = f"predicted {m['predicted_total_bytes'] / GIB:7.2f} GiB"
    if m.get("measured"):
        text += (f", measured {m['peak_bytes'] / GIB:7.2f} GiB ({m['measured_over_predicted']:.3f}x), "
                 f"{m['seconds']:.1f} s")
    else:
        text += f", not measured ({m.get('why')})"
    return text


def video_stage(cfg: dict, device: str, deadline: float, names: list[str] | None = None) -> list[dict]:
    """``names``: the architectures to measure, in that order (default: every one in ``cfg["released"]``)."""
    released = {name: (kind, name, shape) for kind, name, shape in cfg["released"]}
    records = []
    for kind, name, (frames, height, width) in (released[n] for n in names or released):
        if time.monotonic() > deadline:
            print(f"video {name}: skipped (time budget)")
            continue
        torch.manual_seed(0)
        vae = released_vae(kind, name).eval().requires_grad_(False).to(device, cfg["video_dtype"])
        images = random_images(released_shape(vae, frames, height, width)).to(device, cfg["video_dtype"])
        for tiling, method in VIDEO_RUNS:
            if time.monotonic() > deadline:
                break
            if tiling and name in TILING_FAILS:  # diffusers' own tiled pass fails (video_vaes.TILING_FAILS)
                continue
            (vae.enable_tiling if tiling else vae.disable_tiling)()
            run = dict(INVERTED.get(method, {"method": method}))
            try:
                metrics = measured_vs_planned(vae, images, dtype=cfg["video_dtype"], device=device, chunk=frames,
                                              planned=PLANNED[method], steps=1, fit=cfg["fit"], **run)
            except Exception as e:  # noqa: BLE001
                metrics = dict(error=f"{type(e).__name__}: {e}")
            records.append(harness.record(BENCHMARK, method=method, backend="planner vs measured",
                                          dtype=cfg["video_dtype"], shape=images.shape, device=device,
                                          metrics=dict(part="video", vae=name, kind=kind, tiling=tiling,
                                                       **metrics)))
            print(f"video {name:14s} {'tiled' if tiling else 'whole'} {method:11s}: {describe(metrics)}", flush=True)
        del vae, images
        free_memory(device)
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="smoke run at toy sizes (its numbers only check the code)")
    parser.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds from the start; the video stage starts no run after them")
    parser.add_argument("--vaes", nargs="+", metavar="NAME", choices=[name for _, name, _ in RELEASED],
                        help="the video stage measures these released architectures, in this order (default: all)")
    args = parser.parse_args(argv)
    quiet()
    cfg = CONFIGS["quick" if args.quick else "full"]
    deadline = time.monotonic() + args.budget
    stages = dict(residue=residue_stage, kernels=kernels_stage, exact=exact_stage, speed=speed_stage,
                  planner=planner_stage, probe=probe_stage, video=lambda c, d: video_stage(c, d, deadline, args.vaes))
    records: list[dict] = []
    for stage in args.only:
        start = time.perf_counter()
        try:
            records += stages[stage](cfg, args.device)
        except Exception:  # noqa: BLE001 -- a stage that breaks must not lose the others' results
            traceback.print_exc()
        print(f"-- {stage} took {time.perf_counter() - start:.1f} s", flush=True)
        for r in records:
            r["metrics"]["mode"] = "quick" if args.quick else "full"
        path = harness.save(BENCHMARK + ("_quick" if args.quick else ""), records)
    print(f"wrote {len(records)} records to {path}")
    return records


if __name__ == "__main__":
    main()
