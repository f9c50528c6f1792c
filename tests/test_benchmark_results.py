"""The benchmarks' results files: smoke runs never replace measured results."""

import json

from benchmarks import common, harness


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
