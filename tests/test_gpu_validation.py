"""The GPU validation's helpers that need no GPU: the memory-history replay and the per-step timing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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


@pytest.mark.filterwarnings("ignore:cuda_graphs=True on a cpu device", "ignore:CUDA graph capture failed")
def test_the_stages_run_through_on_the_cpu_with_a_tiny_vae(monkeypatch):
    """The exact, speed and planner stages end to end (a tiny VAE standing in for the SD-2.1 layout, toy
    sizes): every record is written; what cannot run on the CPU (the CUDA and Triton backends) is recorded
    as an error, the torch backend's rows as results."""
    import torch
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    def tiny(seed: int = 0):
        torch.manual_seed(seed)
        return AutoencoderKL(**tiny_kl_config()).eval().requires_grad_(False)

    monkeypatch.setattr(gpu_validation, "sd21_vae", tiny)
    cfg = dict(gpu_validation.CONFIGS["quick"], size=32, frames=2, chunks=(1, 2), video_chunk=1, steps=(1, 2),
               exact_steps=1)
    exact = gpu_validation.exact_stage(cfg, "cpu")
    by_backend = {r["backend"]: r["metrics"] for r in exact}
    assert by_backend["invert torch"]["max_abs_diff"] == 0.0  # the official loop, bit for bit on the CPU
    assert "BackendUnavailable" in by_backend["invert cuda"]["error"]
    speed = {r["backend"]: r["metrics"] for r in gpu_validation.speed_stage(cfg, "cpu")}
    assert speed["invert fp16, torch"]["seconds_per_step"] > 0 and "error" in speed["invert fp16, cuda"]
    planner = gpu_validation.planner_stage(cfg, "cpu")
    assert [(r["method"], r["metrics"]["chunk"]) for r in planner] == [
        (m, c) for m in ("adam", "auto", "grad") for c in (1, 2)]
    assert all(r["metrics"]["measured"] and r["metrics"]["measured_over_predicted"] > 0 for r in planner)


def test_the_video_stage_measures_auto_with_latent_mixing_as_planned(monkeypatch):
    """The video stage on the CPU (the released Wan 2.1 at the quick config's toy size): its four runs, each
    measured next to the planner's prediction for the same run; auto with latent mixing is the anderson run
    ``auto_kwargs(mixing="latent")`` spells out, planned as such."""
    import time

    import decinv_fast
    from decinv_fast.options import auto_kwargs

    asked = {"plan": [], "invert": []}
    plan, invert = decinv_fast.plan, decinv_fast.invert
    monkeypatch.setattr(decinv_fast, "plan", lambda *a, **k: asked["plan"].append(k) or plan(*a, **k))
    monkeypatch.setattr(decinv_fast, "invert", lambda *a, **k: asked["invert"].append(k) or invert(*a, **k))
    records = gpu_validation.video_stage(gpu_validation.CONFIGS["quick"], "cpu", deadline=time.monotonic() + 600)
    assert [(r["method"], r["metrics"]["tiling"]) for r in records] == [
        ("adam", False), ("adam", True), ("auto", False), ("auto-latent", True)]
    assert all(r["metrics"]["measured"] and 0.9 < r["metrics"]["measured_over_predicted"] < 1.1 for r in records)
    assert (asked["plan"][3]["method"], asked["plan"][3]["mixing"]) == ("anderson", "latent")
    spelled = auto_kwargs(mixing="latent")
    assert {k: asked["invert"][3][k] for k in spelled} == spelled
    assert asked["invert"][2]["method"] == "auto" and "mixing" not in asked["invert"][2]
