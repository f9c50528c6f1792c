"""Formatting shared by the README report's sections (benchmarks/report.py, report_stopping.py)."""

from __future__ import annotations


def provenance(benchmark: str, records: list[dict]) -> str:
    """The line saying which command, machine, torch and commit produced ``records``."""
    r = records[0]
    dates = sorted(x["timestamp"][:10] for x in records)
    quick = any(x["metrics"].get("mode") == "quick" for x in records)
    line = (f"Command: `python -m benchmarks.{benchmark}` · machine: {r['device']} · torch {r['torch']} · "
            f"git {r['git_sha']} · {dates[-1]}")
    if quick:
        line += " · **smoke run (`--quick`): these numbers only check the code**"
    return line


def cell(value, spec: str = ".2f", none: str = "–") -> str:
    """``value`` formatted, or ``none`` for a missing one."""
    return none if value is None else format(value, spec)


def mib(nbytes) -> str:
    """Bytes as MiB with one decimal."""
    return cell(None if nbytes is None else nbytes / 2**20, ".1f")
