"""The README report's section on ``benchmarks/gpu_validation.py``: what ran on a GPU, and how it compared."""

from __future__ import annotations

GIB = 2**30


def _part(records: list[dict], part: str) -> list[dict]:
    return [r for r in records if r["metrics"].get("part") == part]


def _shas(rows: list[dict]) -> str:
    return ", ".join(dict.fromkeys(r["git_sha"] for r in rows))


def gpu_validation(records: list[dict]) -> list[str]:
    first = records[0]
    dates = sorted(r["timestamp"][:10] for r in records)
    out = ["### GPU validation", "",
           f"Command: `bash scripts/gpu_session.sh` (`python -m benchmarks.gpu_validation`) · machine: "
           f"{first['device']} · torch {first['torch']} · {dates[-1]} · git per part below (the parts ran in "
           "separate calls of one session)",
           "", "SD-2.1 VAE layout with random weights (timing and memory do not depend on the weights' values); the "
           "released video VAE architectures likewise. GPU seconds and CUDA allocator peaks "
           "(`torch.cuda.max_memory_allocated`, weights included).", ""]
    out += _kernels(_part(records, "kernels")) + _exact(_part(records, "exact")) + _speed(_part(records, "speed"))
    out += _planner(_part(records, "planner")) + _video(_part(records, "video")) + _residue(_part(records, "residue"))
    return out + _repredicted(records)


def _repredicted(records: list[dict]) -> list[str]:
    """Where the planner's predictions of the saved run were recomputed after a planner change, when."""
    shas = list(dict.fromkeys(r["metrics"]["predicted_at"] for r in records if "predicted_at" in r["metrics"]))
    if not shas:
        return []
    return [f"The planner and video predictions above were recomputed at git {', '.join(shas)} "
            "(`python -m benchmarks.gpu_predictions`, after a planner change); the measured peaks are as measured.",
            ""]


def _kernels(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = [f"**Update kernels** (git {_shas(rows)}): one fp32 Adam step, `triton.testing.do_bench` median.", "",
           "| provider | latent | median µs | effective GB/s |", "|---|---|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        out.append(f"| {r['backend']} | {'x'.join(map(str, r['shape']))} | {m['seconds_median'] * 1e6:.1f} | "
                   f"{m['effective_gbps']:.1f} |")
    return out + [""]


def _exact(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    m0 = rows[0]["metrics"]
    out = [f"**Exactness** (git {_shas(rows)}): one 512x512 image, fp32 with TF32 off, {m0['steps']} steps of the "
           "paper's Adam, `invert` against the official code's control flow (`benchmarks/reference_loop.py`) on the "
           "same GPU.", "", "| `invert` | max abs Δz | ‖Δz‖ / ‖z‖ |", "|---|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        out.append(f"| {r['backend']} | " + (f"{m['max_abs_diff']:.3g} | {m['relative_l2']:.3g} |" if "error" not in m
                                             else f"{m['error']} | |"))
    return out + [""]


def _speed(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = [f"**Speed** (git {_shas(rows)}): seconds per inversion step from two step counts "
           f"({' and '.join(map(str, rows[0]['metrics']['step_counts']))}; best of two each, after a warm-up), and the "
           "rest of a call (input checks, E(x), CUDA-graph capture and its warm-up steps).", "",
           "| variant | images | ms / step | ms per call besides the steps |", "|---|---|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        if "error" in m:
            out.append(f"| {r['backend']} | | {m['error']} | |")
            continue
        out.append(f"| {r['backend']} | {'x'.join(map(str, r['shape']))} | {m['seconds_per_step'] * 1e3:.1f} | "
                   f"{m['fixed_seconds'] * 1e3:.0f} |")
    return out + [""]


def _measured(m: dict) -> str:
    if "error" in m:
        return m["error"]
    if not m.get("measured"):
        return f"– ({m['predicted_total_bytes'] / GIB:.2f})"
    return f"{m['peak_bytes'] / GIB:.2f} ({m['predicted_total_bytes'] / GIB:.2f}, {m['measured_over_predicted']:.2f}x)"


def _planner(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    chunks = sorted({r["metrics"]["chunk"] for r in rows})
    shape = "x".join(map(str, rows[0]["shape"]))
    out = [f"**Memory planner** (git {_shas(rows)}): {shape} (16 frames of 512x512) in {rows[0]['dtype']}, 2 steps; "
           "measured peak GiB (predicted, measured / predicted) per chunk of frames. grad ran with `keep_best=True` "
           "(random weights overflow its fp16 backward).", "",
           "| method | " + " | ".join(f"chunk {c}" for c in chunks) + " |", "|---|" + "---:|" * len(chunks)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["metrics"]["chunk"]: _measured(r["metrics"]) for r in rows if r["method"] == method}
        out.append(f"| {method} | " + " | ".join(cells.get(c, "") for c in chunks) + " |")
    return out + [""]


def _video(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = [f"**Video VAEs** (git {_shas(rows)}): the released architectures at their pipelines' default sizes, "
           f"{rows[0]['dtype']}, one step, all frames in one call; measured peak GiB (predicted, measured / "
           "predicted).",
           "", "| VAE | frames x height x width | `enable_tiling()` | method | peak GiB | seconds |",
           "|---|---|---|---|---:|---:|"]
    for r in rows:
        m, s = r["metrics"], r["shape"]
        seconds = f"{m['seconds']:.1f}" if m.get("measured") else "–"
        out.append(f"| {m['vae']} | {s[1]} x {s[3]} x {s[4]} | {'yes' if m['tiling'] else 'no'} | {r['method']} | "
                   f"{_measured(m)} | {seconds} |")
    return out + [""]


def _residue(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    shas = list(dict.fromkeys(r["git_sha"] for r in rows))
    out = ["**Memory left behind** after `invert` returns and its result is dropped (MiB after calls 1, 2 and 3 "
           "of each kind, 3 steps each, one 512x512 image in fp16; a constant is cuBLAS's workspace for a stream, "
           "made once per process):", "", "| call | " + " | ".join(f"git {s}" for s in shas) + " |",
           "|---|" + "---|" * len(shas)]
    for name in dict.fromkeys(r["backend"] for r in rows):
        cells = {r["git_sha"]: ", ".join(f"{b / 2**20:.0f}" for b in r["metrics"]["bytes_left_after_each_call"])
                 for r in rows if r["backend"] == name}
        out.append(f"| {name} | " + " | ".join(cells.get(s, "") for s in shas) + " |")
    notes = dict.fromkeys((r["git_sha"], r["metrics"]["note"]) for r in rows if r["metrics"].get("note"))
    return out + ([""] + [f"{sha}: {note}." for sha, note in notes] if notes else []) + [""]
