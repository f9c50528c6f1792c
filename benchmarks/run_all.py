"""Every benchmark, then the plots, then README's Results section (what ``make bench`` runs).

Each benchmark runs in its own process (``python -m benchmarks.<name>``), so one's memory and thread
state cannot leak into another's measurements; a failing benchmark is reported and the rest still run.
The full run takes about 90 minutes on 2 idle CPU cores (the comments below); ``--quick`` is a smoke run
of a few minutes whose numbers only check the code: it saves ``results/<name>_quick.json``, so the
plots and the README report keep reading the full runs' results.

    python -m benchmarks.run_all            # make bench
    python -m benchmarks.run_all --quick
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks import harness
from benchmarks.common import arg_parser

# cheap and independent first; expected full-run minutes on 2 idle cores in the comments
BENCHMARKS = (
    "kernels",  # ~1
    "overhead",  # ~3
    "reference_loop",  # ~3
    "accuracy_vs_time",  # ~7
    "memory_vs_frames",  # ~7
    "stopping",  # ~13 (beyond the paper: Anderson, step size, self-stopping)
    "mean_gain",  # ~8 (auto's gain on the channel means across image sizes)
    "generated_images",  # ~35 (inverting generated images: the latents a diffusion model sampled)
    "video_vaes",  # ~20 (video VAEs that compress time: the fixture's accuracy, the released ones' memory)
    "gradient_memory",  # ~4 (AdjointDEIS / reversible BDIA vs autograd)
)


def run(module: str, args: list[str]) -> tuple[int, float]:
    start = time.perf_counter()
    print(f"\n=== python -m {module} {' '.join(args)}", flush=True)
    code = subprocess.run([sys.executable, "-m", module, *args], cwd=harness.ROOT).returncode
    seconds = time.perf_counter() - start
    print(f"=== {module}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s", flush=True)
    return code, seconds


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__, quick="smoke run of every benchmark (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks (then plot, report)")
    args = parser.parse_args(argv)
    extra = ["--quick"] if args.quick else []
    timings, failed = {}, []
    for name in args.only or BENCHMARKS:
        code, timings[name] = run(f"benchmarks.{name}", extra)
        if code:
            failed.append(name)
    for module in ("benchmarks.plot", "benchmarks.report"):
        code, timings[module] = run(module, [])
        if code:
            failed.append(module)
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; total {sum(timings.values()) / 60:.1f} min")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
