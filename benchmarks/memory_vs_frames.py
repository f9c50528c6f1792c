"""Peak memory vs number of frames: gradient-free (chunked) vs gradient-based, SD-2.1 VAE layout.

The SD-2.1 VAE architecture with random weights (real layer shapes; memory does not depend on the
weights' values), fp32 on the CPU, frames of 128x128 given as one video ``(1, F, 3, H, W)``.
Gradient-free Adam with ``chunk_frames`` 1, 2, 4 and the gradient-based baseline (all frames through
the decoder and back-propagated at once, as the official code does) for F = 1, 2, 4, 8, 16 frames.

Every measured configuration runs ONE inversion step in a fresh process (``--one``), after a tiny
warm-up call, and reports the CPU allocator's peak during the call (``cpu_allocator_peak``: bytes the
call allocated beyond what existed before it, so weights and input are excluded). The memory planner's
prediction (``decinv_fast.plan``, the same quantity: ``added_per_chunk``) is recorded next to every
measurement. Configurations not measured -- predicted to exceed the memory cap, estimated to exceed the
time cap (frames x seconds per frame of that series' 1-frame run), or outside the measured range chosen
to keep the full suite within its time budget -- are reported as the planner predicts them, marked
``"predicted": true`` with the reason.

Also recorded: the planner's prediction for the paper's GPU setting -- 16 frames of 512x512 through
the SD-2.1 VAE in fp16 on ``cuda``, chunks of 1, 2, 4, 8 and 16 frames: gradient-free (the paper's Adam
and ``method="auto"``, whose Anderson history holds fp32 latents and images) vs gradient-based (predictions;
benchmarks/gpu_validation.py measures the same configurations on a GPU).

    python -m benchmarks.memory_vs_frames            # 128x128 (~6-8 CPU minutes)
    python -m benchmarks.memory_vs_frames --quick    # 64x64, up to 4 frames (~1 minute)
"""

from __future__ import annotations

import json
import resource
import subprocess
import time

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import VAE_LABELS, arg_parser, random_images, replace_predictions, save, sd21_vae
from decinv_fast.memory import available_ram, cpu_allocator_peak

BENCHMARK = "memory_vs_frames"
GRAD = "grad"
CONFIGS = {
    # measure: the largest frame count measured per series (chunk size, or GRAD); larger ones are predicted
    "full": dict(size=128, frames=(1, 2, 4, 8, 16), chunks=(1, 2, 4), measure={1: 16, 2: 8, 4: 8, GRAD: 8},
                 time_cap=180),
    "quick": dict(size=64, frames=(1, 2, 4), chunks=(1, 2), measure={1: 4, 2: 2, GRAD: 2}, time_cap=60),
}
GPU_CLAIM = dict(shape=(1, 16, 3, 512, 512), chunks=(1, 2, 4, 8, 16))
PROCESS_BASELINE = 2**30  # interpreter, torch and the VAE's weights, kept free in the memory cap


def series_name(chunk) -> str:
    return "gradient-based" if chunk == GRAD else f"gradient-free chunk {chunk}"


def one(spec: dict) -> dict:
    """The ``--one`` sub-mode (a fresh process): one step of one configuration, allocator peak and time."""
    vae = sd21_vae()
    method = "grad" if spec["chunk"] == GRAD else "adam"
    chunk = None if spec["chunk"] == GRAD else spec["chunk"]
    x = random_images((1, spec["frames"], 3, spec["size"], spec["size"]))
    decinv_fast.invert(vae, x[:, :1, :, :16, :16], steps=1, method=method)  # load kernels outside the measurement
    start = time.perf_counter()
    _, peak = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, steps=1, method=method, chunk_frames=chunk))
    seconds = time.perf_counter() - start
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(peak_bytes=peak, seconds=seconds, max_rss_bytes=max_rss)


def prediction(vae, frames: int, size: int, chunk) -> dict:
    """The planner's prediction for this configuration on the CPU, fp32."""
    method = "grad" if chunk == GRAD else "adam"
    c = frames if chunk == GRAD else chunk
    p = decinv_fast.plan(vae, (1, frames, 3, size, size), dtype=torch.float32, device="cpu", method=method, chunks=[c])
    return dict(predicted_added_bytes=p.added_per_chunk[c], predicted_total_bytes=p.per_chunk[c],
                weights_bytes=p.weights_bytes, input_bytes=p.input_bytes)


def measure_grid(cfg: dict, vae) -> list[dict]:
    memory_cap = int(0.6 * available_ram())
    per_frame: dict = {}  # series -> seconds per frame of its first measured run
    records = []
    print(f"SD-2.1 layout, random weights, {cfg['size']}x{cfg['size']} frames, fp32, 1 step; "
          f"memory cap {memory_cap / 2**30:.1f} GiB, time cap {cfg['time_cap']} s per configuration")
    print(f"{'series':<24}{'frames':>7}{'measured MiB':>14}{'planner MiB':>13}{'seconds':>9}  note")
    for chunk in (*cfg["chunks"], GRAD):
        for frames in cfg["frames"]:
            if chunk != GRAD and chunk > frames:
                continue  # same as chunk = frames
            pred = prediction(vae, frames, cfg["size"], chunk)
            why = None
            if frames > cfg["measure"].get(chunk, 0):
                why = "outside the measured range (time budget of the full suite)"
            elif pred["predicted_total_bytes"] + PROCESS_BASELINE > memory_cap:
                why = f"predicted not to fit the memory cap ({memory_cap / 2**30:.1f} GiB)"
            elif chunk in per_frame and per_frame[chunk] * frames > cfg["time_cap"]:
                why = f"estimated {per_frame[chunk] * frames:.0f} s > time cap {cfg['time_cap']} s"
            metrics = dict(series=series_name(chunk), frames=frames, chunk=frames if chunk == GRAD else chunk,
                           size=cfg["size"], steps=1, **pred)
            if why is None:
                spec = dict(chunk=chunk, frames=frames, size=cfg["size"])
                try:
                    out = harness.run_fresh("benchmarks.memory_vs_frames", ["--one", json.dumps(spec)],
                                            timeout=max(300, 3 * cfg["time_cap"]))
                except subprocess.TimeoutExpired:
                    out = {"error": "timed out"}
                if "error" in out or out.get("peak_bytes") is None:
                    why = f"measurement failed: {out.get('error', 'no peak')}"
                else:
                    per_frame.setdefault(chunk, out["seconds"] / frames)
                    metrics.update(predicted=False, peak_bytes=out["peak_bytes"], seconds=out["seconds"],
                                   max_rss_bytes=out["max_rss_bytes"],
                                   planner_error=pred["predicted_added_bytes"] / out["peak_bytes"] - 1)
            if why is not None:
                metrics.update(predicted=True, peak_bytes=pred["predicted_added_bytes"], why=why)
            method = "grad" if chunk == GRAD else "adam"
            records.append(harness.record(BENCHMARK, method=method, backend="torch", dtype=torch.float32,
                                          shape=(1, frames, 3, cfg["size"], cfg["size"]), device="cpu",
                                          metrics=metrics))
            seconds = f"{metrics['seconds']:.1f}" if "seconds" in metrics else "-"
            measured = "-" if metrics["predicted"] else f"{metrics['peak_bytes'] / 2**20:.1f}"
            print(f"{metrics['series']:<24}{frames:>7}{measured:>14}{pred['predicted_added_bytes'] / 2**20:>13.1f}"
                  f"{seconds:>9}  {why or ''}", flush=True)
    return records


def summaries(records: list[dict], cfg: dict) -> list[dict]:
    """Gradient-free / gradient-based peak per frame count, and the spread of the gradient-free peaks."""
    by = {(r["metrics"]["series"], r["metrics"]["frames"]): r["metrics"] for r in records}
    out = []
    for frames in cfg["frames"]:
        grad = by.get((series_name(GRAD), frames))
        for chunk in cfg["chunks"]:
            free = by.get((series_name(chunk), frames))
            if grad is None or free is None:
                continue
            metrics = dict(kind="ratio", frames=frames, chunk=chunk, ratio=free["peak_bytes"] / grad["peak_bytes"],
                           predicted=free["predicted"] or grad["predicted"])
            out.append(harness.record(BENCHMARK, method="gradient-free / gradient-based", backend="-",
                                      dtype=torch.float32, shape=(1, frames, 3, cfg["size"], cfg["size"]),
                                      device="cpu", metrics=metrics))
    for chunk in cfg["chunks"]:
        measured = {f: m["peak_bytes"] for (s, f), m in by.items() if s == series_name(chunk) and not m["predicted"]}
        if len(measured) >= 2:
            lo, hi = min(measured.values()), max(measured.values())
            metrics = dict(kind="flatness", chunk=chunk, frames_measured=sorted(measured), min_bytes=lo, max_bytes=hi,
                           relative_spread=(hi - lo) / lo)
            out.append(harness.record(BENCHMARK, method=f"gradient-free chunk {chunk} flatness", backend="-",
                                      dtype=torch.float32, shape=None, device="cpu", metrics=metrics))
            print(f"gradient-free chunk {chunk}: measured peak {lo / 2**20:.1f}-{hi / 2**20:.1f} MiB over frames "
                  f"{sorted(measured)} (spread {100 * (hi - lo) / lo:.1f}%)")
    for r in out:
        if r["metrics"]["kind"] == "ratio":
            m = r["metrics"]
            print(f"frames {m['frames']:>2}, chunk {m['chunk']}: gradient-free / gradient-based = {m['ratio']:.3f}"
                  + (" (predicted)" if m["predicted"] else ""))
    return out


def gpu_claim(vae) -> list[dict]:
    """Planner predictions for 16 frames of 512x512, SD-2.1 VAE, fp16, on ``cuda`` (absolute peaks)."""
    records = []
    shape = GPU_CLAIM["shape"]
    chunks = list(GPU_CLAIM["chunks"])
    runs = [("adam", torch.float16, chunks), ("auto", torch.float16, chunks), ("grad", torch.float16, chunks),
            ("grad", torch.float32, [shape[1]])]
    names = {"adam": "gradient-free chunk {c}", "auto": "method='auto' chunk {c}", "grad": "gradient-based chunk {c}"}
    for method, dtype, chunks in runs:
        p = decinv_fast.plan(vae, shape, dtype=dtype, device="cuda", method=method, chunks=chunks)
        for c in chunks:
            series = names[method].format(c=c) + (" (all frames)" if c == shape[1] else "")
            metrics = dict(series=series, kind="gpu prediction", frames=shape[1], chunk=c,
                           predicted_total_bytes=p.per_chunk[c], predicted_added_bytes=p.added_per_chunk[c],
                           weights_bytes=p.weights_bytes)
            records.append(harness.planner_record(BENCHMARK, method=method, dtype=dtype, shape=shape, metrics=metrics))
            print(f"GPU prediction, 16x512x512 {str(dtype).replace('torch.', '')}: {series:<28} "
                  f"{p.per_chunk[c] / 2**30:6.2f} GiB total ({p.added_per_chunk[c] / 2**30:.2f} GiB added)")
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="smoke run: 64x64 frames, up to 4 frames")
    parser.add_argument("--one", help="(internal) run one configuration given as JSON and print one JSON line")
    parser.add_argument("--gpu-predictions-only", action="store_true",
                        help="recompute only the GPU predictions of the saved full run (after a planner change)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return []
    cfg = CONFIGS["quick" if args.quick else "full"]
    vae = sd21_vae()
    if args.gpu_predictions_only:
        records = replace_predictions(BENCHMARK, lambda r: r["metrics"].get("kind") == "gpu prediction",
                                      gpu_claim(vae))
        for r in records:
            r["metrics"].setdefault("vae", VAE_LABELS["sd21"])
        print(f"wrote {len(records)} records to {save(BENCHMARK, records, False)}")
        return records
    records = measure_grid(cfg, vae)
    records += summaries(records, cfg)
    records += gpu_claim(vae)
    for r in records:
        r["metrics"].setdefault("vae", VAE_LABELS["sd21"])
    path = save(BENCHMARK, records, args.quick)
    print(f"wrote {len(records)} records to {path}")
    return records


if __name__ == "__main__":
    main()
