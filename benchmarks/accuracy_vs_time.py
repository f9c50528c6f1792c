"""Accuracy vs time and vs memory: the paper's Figure 3, our version (CPU).

Protocol (``decinv_fast.protocol.make_target``, the paper's): for each held-out photograph crop a
latent ``z*`` is drawn from the fixture VAE's posterior, ``x = D(z*)`` is rounded to 8 bits as a saved
image would be, and ``x`` is inverted. Score: mean over images of ``NMSE(z_hat, z*)`` in dB.

Methods, each at several step counts: encoder-only ``E(x)``; gradient-based Adam through the decoder
(fp32, fixed lr and warmup+cosine schedule); gradient-free Adam (paper schedule) in fp32, bf16 and
fp16 (the VAE held in that dtype; fp16 at few step counts: this CPU has no fast fp16 convolutions),
fp16 both with ``invert``'s default fp32 master copy and as the official code (``fp32_master=False``);
the forward step method (FSM) and inertial Krasnoselskii-Mann (KM). Everything runs through
``decinv_fast.invert`` with its defaults (lr 0.01 for Adam / grad, rho 1.0 for FSM / KM).

Time of a point = seconds from the start of the ``invert`` call to the end of its k-th step (taken by
the ``callback``; the call's closing bookkeeping is left out for every method alike). Methods with a
constant step size (grad fixed lr, FSM, KM) give all their step counts from one run of the largest
count (a k-step run is exactly the first k steps of it); scheduled ones (paper, cosine) depend on the
step count and run once per count. Runs are interleaved over methods. Timed runs pass
``measure_memory=False`` (on the CPU the allocator profiler behind ``peak_bytes`` costs time). Peak
memory: the CPU allocator's peak of a separate 2-step call of the same series (``InversionResult.peak_bytes``,
weights and input excluded; the iteration's buffers and one step's transients do not grow with steps).

    python -m benchmarks.accuracy_vs_time            # 8 crops 64x64, steps 5..100 (~6-9 CPU minutes)
    python -m benchmarks.accuracy_vs_time --quick    # 4 crops 32x32, steps 3..12 (< 1 minute)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import arg_parser, load_vae, resolved_backend, save
from decinv_fast.memory import cpu_allocator_peak
from decinv_fast.protocol import make_target
from decinv_fast.testbed import heldout_crops

BENCHMARK = "accuracy_vs_time"
CONFIGS = {
    "full": dict(crops=8, size=64, steps=(5, 10, 20, 50, 100), half_steps=(10,)),
    "quick": dict(crops=4, size=32, steps=(3, 6, 12), half_steps=(3,)),
}
RATIO_HOW = (
    "time to reach a target NMSE, read off each method's time-vs-NMSE curve: points sorted by time, "
    "starting at the encoder-only point (every method starts from E(x)), best-so-far NMSE, linear "
    "interpolation of time between the two points that bracket the target; ratio = gradient-based "
    "time / gradient-free time. Targets: 'grad_best' = the best NMSE the gradient-based series reaches "
    "(null if the gradient-free series never reaches it); 'common_best' = the best NMSE both series reach "
    "(the higher of their two minima)."
)


@dataclass(frozen=True)
class Series:
    """One curve of the figure: a method, a schedule and a dtype."""

    name: str
    family: str  # "gradient-based" | "gradient-free"
    method: str
    schedule: str
    dtype: torch.dtype
    constant: bool  # constant step size: every step count comes from one run
    options: tuple = ()  # further ``invert`` keyword arguments, as (name, value) pairs

    def kwargs(self) -> dict:
        return dict(method=self.method, schedule=self.schedule, **dict(self.options))


SERIES = (
    Series("grad fixed lr", "gradient-based", "grad", "constant", torch.float32, True),
    Series("grad cosine", "gradient-based", "grad", "cosine", torch.float32, False),
    Series("adam fp32", "gradient-free", "adam", "paper", torch.float32, False),
    Series("adam bf16", "gradient-free", "adam", "paper", torch.bfloat16, False),
    Series("adam fp16", "gradient-free", "adam", "paper", torch.float16, False),
    # the official fp16 code: its Adam second moment underflows (see invert's fp32_master)
    Series("adam fp16 official", "gradient-free", "adam", "paper", torch.float16, False, (("fp32_master", False),)),
    Series("fsm", "gradient-free", "fsm", "constant", torch.float32, True),
    Series("km", "gradient-free", "km", "constant", torch.float32, True),
)


def nmse_stats(estimate: torch.Tensor, truth: torch.Tensor) -> dict:
    per_sample = decinv_fast.nmse_db(estimate.float(), truth, per_sample=True)
    return dict(nmse_db=float(per_sample.mean()), nmse_db_pooled=decinv_fast.nmse_db(estimate.float(), truth),
                nmse_db_per_sample=[round(float(v), 3) for v in per_sample])


def run_series(vaes: dict, target, series: Series, checkpoints: tuple[int, ...]) -> list[dict]:
    """One ``invert`` run of ``max(checkpoints)`` steps with the VAE held in the series' dtype; a record
    per checkpoint (time to the end of that step, NMSE of the iterate there). Only valid for several
    checkpoints when the step size is constant."""
    vae = vaes[series.dtype]
    steps = max(checkpoints)
    marks: dict[int, tuple[float, torch.Tensor]] = {}

    def callback(k: int, latents: torch.Tensor) -> None:
        if k + 1 in checkpoints:
            marks[k + 1] = (time.perf_counter() - start, latents.detach().clone())

    start = time.perf_counter()
    result = decinv_fast.invert(vae, target.images, steps=steps, callback=callback, measure_memory=False,
                                **series.kwargs())
    call_seconds = time.perf_counter() - start
    # the peak from a separate short run: the CPU's allocator profiler would slow the timed one down
    peak_bytes = decinv_fast.invert(vae, target.images, steps=min(steps, 2), **series.kwargs()).peak_bytes
    records = []
    for k in sorted(marks):
        seconds, latents = marks[k]
        metrics = dict(series=series.name, family=series.family, steps=k, schedule=series.schedule,
                       run_steps=steps, seconds=seconds, call_seconds=call_seconds, peak_bytes=peak_bytes,
                       residual=float(result.residuals[k - 1]), **nmse_stats(latents, target.latents),
                       timing="callback at step k of one run" + (" (prefix of a longer run)" if k < steps else ""))
        records.append(harness.record(BENCHMARK, method=series.method, backend=resolved_backend(series.method, latents),
                                      dtype=series.dtype, shape=target.images.shape, device="cpu", metrics=metrics))
    return records


def encoder_only(vae, target) -> dict:
    """``E(x)``: the starting point of every method (best of 3 timings)."""
    decinv_fast.encode(vae, target.images)  # warm-up
    latents, seconds = harness.wall(lambda: decinv_fast.encode(vae, target.images), repeat=3)
    _, peak = cpu_allocator_peak(lambda: decinv_fast.encode(vae, target.images))
    metrics = dict(series="encoder-only", family="encoder-only", steps=0, seconds=seconds, peak_bytes=peak,
                   **nmse_stats(latents, target.latents), timing="best of 3")
    return harness.record(BENCHMARK, method="encoder-only", backend="-", dtype=torch.float32,
                          shape=target.images.shape, device="cpu", metrics=metrics)


def curve(records: list[dict], name: str, start: dict) -> list[tuple[float, float]]:
    """``(seconds, nmse_db)`` of a series sorted by time, beginning at the encoder-only point."""
    points = sorted((r["metrics"]["seconds"], r["metrics"]["nmse_db"]) for r in records
                    if r["metrics"]["series"] == name)
    return [(start["metrics"]["seconds"], start["metrics"]["nmse_db"])] + points


def time_to_reach(points: list[tuple[float, float]], target_db: float) -> float | None:
    """First time the best-so-far NMSE reaches ``target_db`` (linear interpolation), or ``None``."""
    best_t, best_db = points[0]
    if best_db <= target_db:
        return best_t
    for t, db in points[1:]:
        if db <= target_db:
            return best_t + (best_db - target_db) / (best_db - db) * (t - best_t)
        if db < best_db:
            best_t, best_db = t, db
    return None


def ratio_records(records: list[dict], start: dict, shape) -> list[dict]:
    """Gradient-based / gradient-free time to the same NMSE, for every pair of series."""
    names = {r["metrics"]["series"]: r["metrics"]["family"] for r in records}
    out = []
    for grad in (n for n, f in names.items() if f == "gradient-based"):
        grad_curve = curve(records, grad, start)
        grad_best = min(db for _, db in grad_curve)
        for free in (n for n, f in names.items() if f == "gradient-free"):
            free_curve = curve(records, free, start)
            targets = {"grad_best": grad_best, "common_best": max(grad_best, min(db for _, db in free_curve))}
            metrics = dict(gradient_based=grad, gradient_free=free, how=RATIO_HOW)
            for label, target in targets.items():
                t_grad, t_free = time_to_reach(grad_curve, target), time_to_reach(free_curve, target)
                ratio = t_grad / t_free if t_grad is not None and t_free else None
                metrics[label] = dict(target_nmse_db=target, seconds_gradient_based=t_grad,
                                      seconds_gradient_free=t_free, ratio=ratio)
            out.append(harness.record(BENCHMARK, method="time ratio", backend="-", dtype="float32", shape=shape,
                                      device="cpu", metrics=metrics))
    return out


def vaes_by_dtype(vae, half: bool) -> dict:
    """The VAE held in each dtype the series use (as a pipeline holds it), converted once, outside the
    timings; then one step of each kind of run, so first-call costs (oneDNN primitive creation for
    these shapes and dtypes) stay out of the timings too."""
    vaes = {torch.float32: vae, torch.bfloat16: copy.deepcopy(vae).to(torch.bfloat16)}
    if half:
        vaes[torch.float16] = copy.deepcopy(vae).to(torch.float16)
    return vaes


def warm_up(vaes: dict, target) -> None:
    for vae in vaes.values():
        decinv_fast.invert(vae, target.images, steps=1)
    decinv_fast.invert(vaes[torch.float32], target.images, steps=1, method="grad")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="smoke run: fewer, smaller crops and steps")
    parser.add_argument("--steps", type=int, nargs="+", help="step counts (default: the config's)")
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS["quick" if args.quick else "full"])
    steps = tuple(sorted(args.steps or cfg["steps"]))
    vae = load_vae("fixture")
    target = make_target(vae, heldout_crops(cfg["size"], cfg["crops"]), seed=0)
    vaes = vaes_by_dtype(vae, bool(set(cfg["half_steps"]) & set(steps)))
    warm_up(vaes, target)
    start = encoder_only(vae, target)
    records = [start]
    print(f"{cfg['crops']} held-out crops {cfg['size']}x{cfg['size']}, fixture VAE; steps {steps}")
    print(f"{'series':<14}{'steps':>6}{'seconds':>9}{'NMSE dB':>9}{'peak MiB':>10}")

    def show(new: list[dict]) -> None:
        for r in new:
            m = r["metrics"]
            peak = "-" if m["peak_bytes"] is None else f"{m['peak_bytes'] / 2**20:.1f}"
            print(f"{m['series']:<14}{m['steps']:>6}{m['seconds']:>9.2f}{m['nmse_db']:>9.2f}{peak:>10}", flush=True)
        records.extend(new)

    show([start])
    scheduled = [s for s in SERIES if not s.constant]
    for n in steps:  # scheduled series: one run per step count, interleaved over series
        for s in scheduled:
            if s.dtype == torch.float16 and n not in cfg["half_steps"]:
                continue  # no fp16 kernels on this CPU: ~10x slower than fp32, so only a few points
            show(run_series(vaes, target, s, (n,)))
    for s in (s for s in SERIES if s.constant):
        show(run_series(vaes, target, s, steps))
    ratios = ratio_records(records, start, target.images.shape)
    records.extend(ratios)
    for r in ratios:
        m = r["metrics"]
        best = m["grad_best"]["ratio"]
        best = "n/a (not reached)" if best is None else f"{best:.2f}x"
        print(f"time {m['gradient_based']} / {m['gradient_free']}: at the gradient-based best "
              f"({m['grad_best']['target_nmse_db']:.2f} dB) {best}; at the common best "
              f"({m['common_best']['target_nmse_db']:.2f} dB) "
              f"{_fmt_ratio(m['common_best']['ratio'])}")
    path = save(BENCHMARK, records, args.quick)
    print(f"wrote {len(records)} records to {path}")
    return records


def _fmt_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}x"


if __name__ == "__main__":
    main()
