"""The GPU validation's helpers that need no GPU: the memory-history replay and the per-step timing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks import gpu_validation
from benchmarks.gpu_validation import live_at_peak, step_cost, where

REPO = Path(__file__).resolve().parents[1]


def test_replay_finds_the_blocks_live_at_the_allocated_peak():
    frame = lambda name: [{"filename": f"/x/site-packages/{name}", "line": 1, "name": "f"}]
    trace = [dict(action="alloc", addr=1, size=10, frames=frame("diffusers/a.py")),
             dict(action="alloc", addr=2, size=30, frames=frame("torch/nn/conv.py")),
             dict(action="free_requested", addr=2, size=30), dict(action="free_completed", addr=2, size=30),
             dict(action="alloc", addr=3, size=25, frames=frame("other.py")),
             dict(action="alloc", addr=4, size=1, frames=[])]
    peak, blocks = live_at_peak({"device_traces": [trace]})
    assert peak == 40 and sorted(b["addr"] for b in blocks) == [1, 2]  # 10 + 30 beats 10 + 25 + 1
    assert where(blocks[1]) == "torch/nn/conv.py:1 f" and where(trace[4]) == "elsewhere"


def test_step_cost_separates_the_per_step_time_from_the_rest_of_a_call(monkeypatch):
    monkeypatch.setattr(gpu_validation.harness, "wall", lambda fn, device: (None, fn()))
    per_step, fixed = step_cost(lambda steps: 0.5 + 0.1 * steps, (5, 25), "cpu")
    assert abs(per_step - 0.1) < 1e-12 and abs(fixed - 0.5) < 1e-12


def test_the_session_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_session.sh")]).returncode == 0
