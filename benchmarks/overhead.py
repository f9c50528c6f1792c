"""Per-iteration overhead of the engine: one inversion step / the bare decoder + encoder forward.

Goal: <= 1.03. Measured side by side on the same input, interleaved (A B C A B C ...), best of N:

* ``bare``: ``E(D(y))`` through the VAE adapter, nothing else (the floor any method pays);
* ``codec``: the engine's per-chunk function (today ``E(D(y))`` plus the per-frame pixel error);
* ``run_step``: ``GradientFreeIteration.run_step`` (codec, copy into the residual buffer, fused update,
  norms, step counter), the object ``invert`` steps.

Cross-check with whole calls: the marginal time per step, ``(t(S1 steps) - t(S0 steps)) / (S1 - S0)``,
of ``invert`` itself and of the engine loop without ``invert``'s wrapper (on the CPU ``invert`` runs the
PyTorch profiler for the whole call to report ``peak_bytes``; the difference shows its cost).

    python -m benchmarks.overhead            # fixture 64x64 (batch 1, 8), SD-2.1 layout 64x64, 128x128 (~3 CPU minutes)
    python -m benchmarks.overhead --quick    # 32x32 (< 1 minute)
"""

from __future__ import annotations

import statistics

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import (
    VAE_LABELS,
    arg_parser,
    engine_iteration,
    interleaved,
    load_vae,
    protocol_inputs,
    run_engine,
    save,
)

BENCHMARK = "overhead"
GOAL = 1.03
CONFIGS = {
    "full": [dict(vae="fixture", size=64, batch=1, repeat=30, calls=(2, 12), call_repeat=3),
             dict(vae="fixture", size=64, batch=8, repeat=40, calls=(2, 12), call_repeat=3),
             dict(vae="sd21", size=64, batch=1, repeat=6, calls=(1, 3), call_repeat=2),
             dict(vae="sd21", size=128, batch=1, repeat=3, calls=None, call_repeat=0)],
    "quick": [dict(vae="fixture", size=32, batch=2, repeat=5, calls=(1, 4), call_repeat=2),
              dict(vae="sd21", size=32, batch=1, repeat=2, calls=None, call_repeat=0)],
}


@torch.no_grad()
def per_step(vae, x: torch.Tensor, repeat: int) -> dict[str, list[float]]:
    """Interleaved timings of ``bare``, ``codec`` and ``run_step`` on one iteration's current iterate."""
    iteration = engine_iteration(vae, x, steps=repeat + 3)
    adapter, y = iteration.adapter, iteration.y
    fns = {
        "bare": lambda: adapter.encode(adapter.decode(y, 1)),
        "codec": lambda: iteration.codec(y, iteration.x),
        "run_step": iteration.run_step,
    }
    return interleaved(fns, repeat=repeat, warmup=1)


def marginal_per_step(vae, x: torch.Tensor, calls: tuple[int, int], repeat: int) -> dict[str, float]:
    """Seconds per extra step of whole ``invert`` calls and of the engine loop (best of ``repeat``)."""

    def engine(steps: int):
        return lambda: run_engine(vae, x, steps)

    s0, s1 = calls
    fns = {f"invert {s0}": lambda: decinv_fast.invert(vae, x, steps=s0),
           f"invert {s1}": lambda: decinv_fast.invert(vae, x, steps=s1),
           f"engine {s0}": engine(s0), f"engine {s1}": engine(s1)}
    best = {k: min(v) for k, v in interleaved(fns, repeat=repeat, warmup=0).items()}
    return {"invert": (best[f"invert {s1}"] - best[f"invert {s0}"]) / (s1 - s0),
            "engine loop": (best[f"engine {s1}"] - best[f"engine {s0}"]) / (s1 - s0),
            **{f"seconds {k}": v for k, v in best.items()}}


def measure(cfg: dict) -> list[dict]:
    vae = load_vae(cfg["vae"])
    x = protocol_inputs(cfg, vae, cfg["batch"])
    times = per_step(vae, x, cfg["repeat"])
    best = {k: min(v) for k, v in times.items()}
    paired = [s / b for s, b in zip(times["run_step"], times["bare"], strict=True)]
    metrics = dict(vae=VAE_LABELS[cfg["vae"]], repeat=cfg["repeat"], goal=GOAL,
                   bare_seconds=best["bare"], codec_seconds=best["codec"], run_step_seconds=best["run_step"],
                   ratio_run_step_over_bare=best["run_step"] / best["bare"],
                   ratio_codec_over_bare=best["codec"] / best["bare"],
                   ratio_run_step_over_bare_median_paired=statistics.median(paired),
                   seconds_all={k: v for k, v in times.items()},
                   how="interleaved single calls on the same iterate, best of repeat (and median of paired ratios)")
    line = (f"[{cfg['vae']} {cfg['batch']}x3x{cfg['size']}x{cfg['size']}] bare {best['bare'] * 1e3:.1f} ms, "
            f"codec {best['codec'] * 1e3:.1f} ms, run_step {best['run_step'] * 1e3:.1f} ms: "
            f"run_step/bare {metrics['ratio_run_step_over_bare']:.3f} (goal <= {GOAL}), "
            f"codec/bare {metrics['ratio_codec_over_bare']:.3f}")
    if cfg["calls"]:
        marginal = marginal_per_step(vae, x, cfg["calls"], cfg["call_repeat"])
        metrics.update(calls_steps=list(cfg["calls"]), call_repeat=cfg["call_repeat"],
                       invert_marginal_step_seconds=marginal["invert"],
                       engine_marginal_step_seconds=marginal["engine loop"],
                       ratio_invert_marginal_over_bare=marginal["invert"] / best["bare"],
                       ratio_engine_marginal_over_bare=marginal["engine loop"] / best["bare"],
                       calls_seconds={k: v for k, v in marginal.items() if k.startswith("seconds")})
        line += (f"; whole calls, marginal step/bare: invert {metrics['ratio_invert_marginal_over_bare']:.3f}, "
                 f"engine loop {metrics['ratio_engine_marginal_over_bare']:.3f}")
    print(line, flush=True)
    return [harness.record(BENCHMARK, method="adam step / bare E(D(y))", backend="torch", dtype=torch.float32,
                           shape=tuple(x.shape), device="cpu", metrics=metrics)]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="smoke run: 32x32 inputs, few repeats")
    args = parser.parse_args(argv)
    records = []
    for cfg in CONFIGS["quick" if args.quick else "full"]:
        records += measure(cfg)
    path = save(BENCHMARK, records, args.quick)
    print(f"wrote {len(records)} records to {path}")
    return records


if __name__ == "__main__":
    main()
