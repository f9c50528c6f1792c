"""The benchmarks' results files: smoke runs never replace measured results."""

import json
import subprocess

import torch

from benchmarks import common, harness, report_format


def test_a_smoke_run_is_saved_beside_the_full_results(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    full = [{"metrics": {"nmse_db": -30.0}}]
    common.save("example", full, quick=False)
    common.save("example", [{"metrics": {"nmse_db": -1.0}}], quick=True)
    kept = json.loads((tmp_path / "example.json").read_text())
    assert kept == [{"metrics": {"nmse_db": -30.0, "mode": "full"}}]
    assert harness.load("example") == kept
    assert json.loads((tmp_path / "example_quick.json").read_text())[0]["metrics"]["mode"] == "quick"


def test_provenance_outside_a_git_checkout(tmp_path, monkeypatch):
    """An unpacked sdist has no git: the results say "unknown", not an empty sha."""
    monkeypatch.setattr(harness, "ROOT", tmp_path)
    harness.git_sha.cache_clear()
    try:
        assert harness.git_sha() == "unknown"
    finally:
        harness.git_sha.cache_clear()


def test_the_readme_results_section_is_what_the_report_writes_from_the_committed_results():
    """The README's numbers are report.render() of benchmarks/results/*.json, not edited by hand or stale."""
    from benchmarks import report

    section = report.README.read_text().split(report.START, 1)[1].split(report.END, 1)[0]
    assert section == "\n" + report.render()


def test_a_saved_record_is_tagged_with_this_runs_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    common.save("example", [{"metrics": {"mode": "quick"}}], quick=False)  # e.g. re-saved from a smoke run
    assert harness.load("example")[0]["metrics"]["mode"] == "full"
    assert harness.load("missing") == []


def test_a_record_names_the_dtype_without_the_torch_prefix():
    r = harness.record("example", method="m", backend="b", dtype=torch.bfloat16, shape=(1, 3), device="cpu",
                       metrics={})
    assert (r["dtype"], r["shape"], r["device"].startswith("cpu: ")) == ("bfloat16", [1, 3], True)


def test_wall_returns_the_best_of_the_repeats(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # runs of 3, 1 and 2 seconds
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(clock))
    calls = []
    assert harness.wall(lambda: calls.append(1) or len(calls), repeat=3) == (3, 1.0)


def test_interleaved_times_every_function_repeat_times_after_the_warmup():
    calls = {"a": 0, "b": 0}
    fns = {name: (lambda name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls}
    times = common.interleaved(fns, repeat=3, warmup=2)
    assert calls == {"a": 5, "b": 5}
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}


def test_run_fresh_returns_the_last_json_line(monkeypatch):
    out = '{"progress": 1}\nnot json\n{"result": 2}\n'
    monkeypatch.setattr(harness.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out, stderr=""))
    assert harness.run_fresh("anything", []) == {"result": 2}
    monkeypatch.setattr(harness.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout=out, stderr="x\nBoom"))
    assert harness.run_fresh("anything", []) == {"error": "Boom", "returncode": 1}


def test_provenance_names_the_latest_date_and_any_smoke_run():
    base = {"device": "cpu", "torch": "2", "git_sha": "abc"}
    records = [dict(base, timestamp="2026-01-02T00:00:00", metrics={"mode": "full"}),
               dict(base, timestamp="2026-01-05T00:00:00", metrics={"mode": "quick"}),
               dict(base, timestamp="2026-01-03T00:00:00", metrics={})]
    line = report_format.provenance("example", records)
    assert line.startswith("Command: `python -m benchmarks.example` · machine: cpu · torch 2 · git abc · 2026-01-05")
    assert "smoke run" in line
    assert "smoke run" not in report_format.provenance("example", [records[0], records[2]])


def test_cells_format_zero_and_mark_only_a_missing_value():
    assert (report_format.cell(0.0), report_format.cell(None), report_format.cell(-1.234, ".1f")) == \
        ("0.00", "–", "-1.2")
    assert (report_format.mib(3 * 2**20 + 2**19), report_format.mib(None)) == ("3.5", "–")
