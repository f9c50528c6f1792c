"""Shared benchmark harness: fixed-schema results, timing, memory, fresh-process runs.

Every measurement is appended to ``benchmarks/results/<benchmark>.json`` as one record::

    {benchmark, method, backend, dtype, shape, device, torch, git_sha, timestamp, metrics}

Timings that are compared are measured side by side in one run (these machines are noisy);
plotting lives in ``benchmarks/plot.py`` and reads only these files.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# what a GPU prediction record says of itself
PLANNER_CHECK = ("prediction by decinv_fast.plan for device 'cuda' "
                 "(checked against an H100: benchmarks/gpu_validation.py)")
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def git_sha() -> str:
    """The checkout's commit (``-dirty`` with uncommitted code), or ``DECINV_GIT_SHA`` for a copy without
    ``.git`` (e.g. a working tree sent to a GPU machine)."""
    if os.environ.get("DECINV_GIT_SHA"):
        return os.environ["DECINV_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:  # not a git checkout (e.g. an unpacked sdist)
            return "unknown"
        # results written by an earlier benchmark of the same run do not make the code dirty
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"]
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}, {torch.get_num_threads()} threads"


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(benchmark: str, *, method: str, backend: str, dtype, shape, device, metrics: dict) -> dict:
    """One result in the fixed schema."""
    return {
        "benchmark": benchmark, "method": method, "backend": backend,
        "dtype": str(dtype).replace("torch.", ""), "shape": list(shape) if shape is not None else None,
        "device": device_name(device), "torch": torch.__version__, "git_sha": git_sha(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "metrics": metrics,
    }


def planner_record(benchmark: str, *, method: str, dtype, shape, metrics: dict) -> dict:
    """A record of ``decinv_fast.plan``'s prediction for a GPU (computed here, on the CPU): its device says so."""
    rec = record(benchmark, method=method, backend="planner", dtype=dtype, shape=shape, device="cpu",
                 metrics=dict(metrics, predicted=True, why=PLANNER_CHECK))
    rec["device"] = "cuda (predicted by decinv_fast.plan)"
    return rec


def save(benchmark: str, records: list[dict]) -> Path:
    """Write ``records`` to ``results/<benchmark>.json``, replacing the previous run's."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{benchmark}.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def load(benchmark: str) -> list[dict]:
    path = RESULTS / f"{benchmark}.json"
    return json.loads(path.read_text()) if path.exists() else []


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def wall(fn, device="cpu", repeat: int = 1) -> tuple[object, float]:
    """``(fn()'s last result, best wall seconds over repeat runs)``."""
    best, result = float("inf"), None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def run_fresh(module: str, args: list[str], timeout: int = 1800) -> dict:
    """Run ``python -m module args`` in a fresh process; it must print one JSON line last."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "returncode": proc.returncode}
    return json.loads(lines[-1])
