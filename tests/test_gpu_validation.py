"""The GPU validation's helpers that need no GPU: the memory-history replay and the per-step timing."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("env, expected", [
    (dict(STAGES="video", VAES="Cosmos 1.0,Mochi 1"), ["--only", "video", "--vaes", "Cosmos 1.0", "Mochi 1"]),
    (dict(STAGES="planner speed"), ["--only", "planner", "speed"]),
    ({}, [])])
def test_the_session_script_hands_stages_and_vaes_to_the_validation(tmp_path, env, expected):
    """$STAGES and $VAES (names with spaces, comma-separated) reach gpu_validation as its arguments; a
    stand-in Python records what each call of the script was given."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> {calls}\necho --- >> {calls}\n')
    fake.chmod(0o755)
    run_env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out"), SKIP_TESTS="1", BUDGET="60", **env)
    for name in {"STAGES", "VAES"} - set(env):
        run_env.pop(name, None)
    subprocess.run(["bash", str(REPO / "scripts" / "gpu_session.sh")], cwd=tmp_path, env=run_env,
                   capture_output=True, check=True)
    last = calls.read_text().split("---\n")[-2].splitlines()
    assert last == ["-m", "benchmarks.gpu_validation", "--budget", "60", *expected]


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


def test_the_video_stage_measures_the_architectures_named_in_their_order_and_skips_failing_tiling(monkeypatch):
    """``--vaes`` picks architectures and their order (a later call measures what an earlier one had no time
    for); a VAE whose diffusers tiling fails (``video_vaes.TILING_FAILS``) runs untiled only."""
    import time

    import torch
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    ran = []
    monkeypatch.setattr(gpu_validation, "released_vae", lambda kind, name: AutoencoderKL(**tiny_kl_config()))
    monkeypatch.setattr(gpu_validation, "measured_vs_planned",
                        lambda vae, images, **k: ran.append(k["planned"]) or dict(error="stub"))
    released = tuple(("AutoencoderKL", name, (1, 32, 32)) for name in ("A", "HunyuanImage 2.1", "B"))
    cfg = dict(gpu_validation.CONFIGS["quick"], released=released, video_dtype=torch.float32)
    records = gpu_validation.video_stage(cfg, "cpu", time.monotonic() + 600, ["HunyuanImage 2.1", "A"])
    assert [(r["metrics"]["vae"], r["method"], r["metrics"]["tiling"]) for r in records] == [
        ("HunyuanImage 2.1", "adam", False), ("HunyuanImage 2.1", "auto", False),
        ("A", "adam", False), ("A", "adam", True), ("A", "auto", False), ("A", "auto-latent", True)]
    assert len(ran) == 6


def test_saved_predictions_are_recomputed_and_the_measurements_kept(monkeypatch, tmp_path):
    """``python -m benchmarks.gpu_predictions`` after a planner change: each planner / video record gets the
    current planner's prediction for its configuration and its ratio to the unchanged measured peak; other
    records and failed runs stay as they are."""
    import torch

    import decinv_fast
    from benchmarks import gpu_predictions, harness
    from benchmarks.common import sd21_vae
    from benchmarks.video_vaes import released_vae

    def row(part, method, shape, dtype, **metrics):
        return dict(benchmark="gpu_validation", method=method, backend="planner vs measured", dtype=dtype,
                    shape=shape, git_sha="old", metrics=dict(part=part, predicted_total_bytes=1, **metrics))

    saved = [row("planner", "auto", [1, 2, 3, 32, 32], "float16", vae="SD-2.1", chunk=1, measured=True,
                 peak_bytes=3 * 2**20),
             row("video", "auto-latent", [1, 5, 3, 32, 32], "bfloat16", vae="Wan 2.1", kind="AutoencoderKLWan",
                 tiling=True, chunk=5, measured=False),
             row("video", "adam", [1, 5, 3, 32, 32], "bfloat16", vae="Wan 2.1", kind="AutoencoderKLWan",
                 tiling=False, chunk=5, error="OutOfMemoryError"),
             dict(benchmark="kernels", method="adam update", metrics=dict(part="kernels", seconds_median=1e-5))]
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    harness.save("gpu_validation", saved)
    out = gpu_predictions.main([])
    assert out[2:] == saved[2:] and harness.load("gpu_validation") == out
    with torch.device("meta"):
        sd, wan = sd21_vae(), released_vae("AutoencoderKLWan", "Wan 2.1")
    sd = torch.nn.Module.to(sd, torch.float16)
    wan = torch.nn.Module.to(wan, torch.bfloat16)
    wan.enable_tiling()
    expected = [decinv_fast.plan(sd, (1, 2, 3, 32, 32), dtype=torch.float16, device="cuda", chunks=[1],
                                 method="auto").per_chunk[1],
                decinv_fast.plan(wan, (1, 5, 3, 32, 32), dtype=torch.bfloat16, device="cuda", chunks=[5],
                                 **gpu_predictions.PLANNED["auto-latent"]).per_chunk[5]]
    assert [r["metrics"]["predicted_total_bytes"] for r in out[:2]] == expected
    assert out[0]["metrics"]["measured_over_predicted"] == 3 * 2**20 / expected[0]
    assert "measured_over_predicted" not in out[1]["metrics"] and out[0]["metrics"]["predicted_at"]
    assert out[0]["metrics"]["peak_bytes"] == 3 * 2**20 and out[0]["git_sha"] == "old"
