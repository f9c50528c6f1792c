"""Recompute the planner's predictions of the saved GPU validation run after a planner change (no GPU needed:
the planner traces a weightless copy of each VAE). The measured peaks stay as measured; each prediction, and
its ratio to the measured peak, is replaced, and its record notes the commit that predicted it.

    python -m benchmarks.gpu_predictions
"""

from __future__ import annotations

import argparse

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import quiet, sd21_vae
from benchmarks.gpu_validation import BENCHMARK, PLANNED
from benchmarks.video_vaes import released_vae


def _weightless_vae(record: dict):
    """The measured run's VAE on the meta device, in its dtype, tiled as it ran."""
    m = record["metrics"]
    with torch.device("meta"):
        vae = sd21_vae() if m["part"] == "planner" else released_vae(m["kind"], m["vae"])
    vae = torch.nn.Module.to(vae, getattr(torch, record["dtype"]))
    if m.get("tiling"):
        vae.enable_tiling()
    return vae


def repredict(record: dict) -> dict:
    """``record`` (a planner or video row of ``gpu_validation.json``) with the current planner's prediction."""
    m = dict(record["metrics"])
    planned = PLANNED[record["method"]] if m["part"] == "video" else {"method": record["method"]}
    p = decinv_fast.plan(_weightless_vae(record), tuple(record["shape"]), dtype=getattr(torch, record["dtype"]),
                         device="cuda", chunks=[m["chunk"]], **planned)
    m.update(predicted_total_bytes=p.per_chunk[m["chunk"]], predicted_added_bytes=p.added_per_chunk[m["chunk"]],
             weights_bytes=p.weights_bytes, predicted_at=harness.git_sha())
    if m.get("measured"):
        m["measured_over_predicted"] = m["peak_bytes"] / m["predicted_total_bytes"]
    return dict(record, metrics=m)


def main(argv: list[str] | None = None) -> list[dict]:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    quiet()
    records = harness.load(BENCHMARK)
    if not records:
        raise SystemExit(f"no saved results of {BENCHMARK}: run it on a GPU first (bash scripts/gpu_session.sh)")
    out = []
    for r in records:
        m = r["metrics"]
        if m.get("part") in ("planner", "video") and "error" not in m:
            before = m["predicted_total_bytes"]
            r = repredict(r)
            after = r["metrics"]["predicted_total_bytes"]
            print(f"{m['part']:7s} {m['vae']:28s} {r['method']:11s} chunk {m['chunk']:>3}: "
                  f"{before / 2**30:7.2f} -> {after / 2**30:7.2f} GiB predicted", flush=True)
        out.append(r)
    print(f"wrote {len(out)} records to {harness.save(BENCHMARK, out)}")
    return out


if __name__ == "__main__":
    main()
