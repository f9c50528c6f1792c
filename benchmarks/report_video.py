"""The README report's section on ``benchmarks/video_vaes.py``: video VAEs that compress time."""

from __future__ import annotations

import statistics

from benchmarks.report_format import provenance
from decinv_fast.options import AUTO

LABELS = {"adam": "the paper's Adam", "fsm": "fsm, lr 1", "anderson": "anderson", "auto": "auto (stops itself)",
          "auto-latent": "auto with latent mixing", "auto-sample-weights": "auto, one set of mixing weights per video",
          "auto-first-frame-together": "auto, first frames not inverted alone first",
          "auto-first-frame-start": "auto, the first frames inverted at gain 3",
          "auto-first-frame-join": "auto, the first frames' result joined after 4 steps",
          "auto-second-frame-together": "auto, the first two latent frames not run apart",
          "grad": "gradient-based (Adam on the pixel error)"}
MEMORY_COLUMNS = (("adam", "adam"), ("auto", "auto"), ("auto-latent", "auto, latent mixing"), ("grad", "grad"))


def video_vaes(records: list[dict]) -> list[str]:
    runs = [r for r in records if r["metrics"]["part"] == "accuracy"]
    plans = [r for r in records if r["metrics"]["part"] == "memory"]
    clips, frames, _, size, _ = runs[0]["shape"]
    out = ["### Video VAEs that compress time", "", provenance("video_vaes", records), "",
           f"Accuracy: the fixture video VAE (`benchmarks/assets/fixture_video_vae`, a tiny trained "
           f"`AutoencoderKLWan`, 8x space, 4x time, reconstruction PSNR about 20 dB), {clips} held-out clips of "
           f"{frames} frames at {size}x{size} (latents `(B, 4, {1 + (frames - 1) // 4}, {size // 8}, {size // 8})`), "
           "the paper's protocol; NMSE(z) dB and the PSNR of `D(z)` against the 8-bit `x`, means over clips; "
           "evaluations: decoder+encoder passes (auto: mean per clip, it stops itself; grad: decoder forward "
           "and backward). CPU seconds. `auto` fits Anderson's mixing weights per latent frame (`frame_weights`); "
           "`auto` with one set per video (`auto_kwargs(frame_weights=False)`) is `auto` as it was before "
           "2026-11-24. `auto` inverts a causal video VAE's first frames alone first "
           "(`first_frame_steps`, `decinv_fast.first_frame`); a step there counts as 1/" + str(frames) + " of an "
           "evaluation; `auto_kwargs(first_frame_steps=0)` does not. It inverts them at a mean gain of 1.5 "
           "(`first_frame_gain`); `auto_kwargs(first_frame_gain=None)` at its gain for images, 3. It starts its "
           "second latent frame where 3 steps from `E(x)` on the first 5 frames alone take it (`second_frame_steps`; "
           "such a step counts as 5/" + str(frames) + " of an evaluation); `auto_kwargs(second_frame_steps=0)`, "
           "`auto` until 2026-11-25, does not. `auto_kwargs(first_frame_join=4, second_frame_steps=0)` lets the "
           "whole run take 4 steps from `E(x)` before its first latent frame takes the first frames' result "
           "(`first_frame_join`). Each of these is today's `auto` with that one setting changed.", "",
           *_table(runs)]
    for spread in (_auto_per_clip(runs), _frame_weights_per_clip(runs), _per_latent_frame(runs)):
        if spread:
            out += ["", spread]
    out += _longer_clips([r for r in records if r["metrics"]["part"] == "accuracy-long"])
    out += ["", "Memory (**predicted** by `decinv_fast.plan`; *GPU validation* below measures adam and auto "
            "on an H100): the released architectures (diffusers' class defaults, or its conversion scripts' "
            "configurations: `RELEASED_CONFIG`; built on the meta device), one video at its pipeline's default size "
            "(an image VAE's: one image; Qwen-Image 2.1's images RGBA), bf16, all frames in one call; total "
            "allocator peak with weights, GiB. The gradient-based baseline back-propagates through the whole video; "
            "auto with latent mixing (`invert(vae, video, **decinv_fast.options.auto_kwargs(mixing=\"latent\"))`) "
            f"keeps no pixel history, where auto keeps {AUTO['options']['memory'] + 2} fp32 copies of the video's "
            "pixels."
            + _recomputed(runs, plans), "",
            "| VAE | frames x height x width | `enable_tiling()` | " + " | ".join(t for _, t in MEMORY_COLUMNS) + " |",
            "|---|---|---|" + "---:|" * len(MEMORY_COLUMNS)]
    for key in dict.fromkeys((r["metrics"]["vae"], r["metrics"]["tiling"]) for r in plans):
        cell = {r["method"]: r for r in plans if (r["metrics"]["vae"], r["metrics"]["tiling"]) == key}
        shape = next(iter(cell.values()))["shape"]
        sizes = " | ".join(f"{cell[m]['metrics']['predicted_total_bytes'] / 2**30:.2f}" if m in cell else "–"
                           for m, _ in MEMORY_COLUMNS)
        out.append(f"| {key[0]} | {shape[1]} x {shape[3]} x {shape[4]} | {'yes' if key[1] else 'no'} | {sizes} |")
    return out


def _table(runs: list[dict]) -> list[str]:
    """The accuracy runs as a table: method, cap, evaluations, NMSE, PSNR, seconds."""
    out = ["| method | cap | evaluations | NMSE(z) dB | PSNR of D(z) dB | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        m = r["metrics"]
        label = "encoder-only" if r["method"] == "encoder-only" else LABELS[r["method"]]
        out.append(f"| {label} | {m.get('cap', '–')} | {m['evaluations']:.1f} | {m['nmse_db']:.2f} | "
                   f"{m['psnr_db']:.2f} | {m['seconds']:.1f} |")
    return out


def _longer_clips(runs: list[dict]) -> list[str]:
    """The longer clips' table and NMSE per latent frame ([] for results from before 2026-11-25, without them)."""
    if not runs:
        return []
    clips, frames, _, size, _ = runs[0]["shape"]
    latent = 1 + (frames - 1) // 4
    rows = [("the encoder's guess" if r["method"] == "encoder-only" else f"{LABELS[r['method']]} capped at "
             f"{r['metrics']['cap']}") + " " + " / ".join(f"{v:.2f}" for v in r["metrics"]["per_latent_frame_db"])
            for r in runs]
    return ["", f"Longer clips ({clips} held-out clips of {frames} frames at {size}x{size}, latents `(B, 4, {latent}, "
            f"{size // 8}, {size // 8})`; `python -m benchmarks.video_vaes`, or its `--long-only` alone, at git "
            f"{runs[0]['git_sha']}): "
            "where `auto`'s first-frame settings were chosen, its gain for them (against gain 3), its start "
            "(against joining their result after 4 steps, which wins on the 9-frame clips above without the second "
            "run) and its second run (against none).", "",
            *_table(runs), "", "Per latent frame, these clips: " + "; ".join(rows) + "."]


def _auto_per_clip(runs: list[dict]) -> str:
    """Per clip, what ``auto`` at its largest cap gains over ``auto`` capped at its smallest: one clip's
    gain or spread over them ("" for results from before 2026-11-24, without per-clip NMSE)."""
    autos = sorted((r["metrics"] for r in runs if r["method"] == "auto" and "per_clip_db" in r["metrics"]),
                   key=lambda m: m["cap"])
    if len(autos) < 2:
        return ""
    low, high = autos[0], autos[-1]
    return _gains(f"`auto` capped at {high['cap']} against capped at {low['cap']}", low, high)


def _frame_weights_per_clip(runs: list[dict]) -> str:
    """Per clip, what ``auto``'s weights per latent frame gain over one set per video at the smallest cap both
    ran ("" where the results have no such pair)."""
    per_clip = {(r["method"], r["metrics"]["cap"]): r["metrics"] for r in runs
                if r["method"] in ("auto", "auto-sample-weights") and "per_clip_db" in r["metrics"]}
    caps = sorted(cap for method, cap in per_clip if method == "auto" and ("auto-sample-weights", cap) in per_clip)
    if not caps:
        return ""
    return _gains(f"`auto` against one set of mixing weights per video, both capped at {caps[0]}",
                  per_clip[("auto-sample-weights", caps[0])], per_clip[("auto", caps[0])])


def _per_latent_frame(runs: list[dict]) -> str:
    """NMSE(z) per latent frame of the encoder's guess and of ``auto`` with and without its first frames alone at each
    cap ("" for results from before 2026-11-24, without it)."""
    names = {"encoder-only": lambda m: "the encoder's guess", "auto": lambda m: f"`auto` capped at {m['cap']}",
             "auto-first-frame-together": lambda m: f"`auto` without its first frames alone capped at {m['cap']}",
             "auto-first-frame-start": lambda m: f"`auto` with its first frames at gain 3 capped at {m['cap']}",
             "auto-first-frame-join": lambda m: f"`auto` joining its first frames' result capped at {m['cap']}",
             "auto-second-frame-together": lambda m: f"`auto` without its first two latent frames apart capped at "
                                                     f"{m['cap']}"}
    rows = [(names[r["method"]](r["metrics"]), r["metrics"]["per_latent_frame_db"]) for r in runs
            if r["method"] in names and "per_latent_frame_db" in r["metrics"]]
    if not rows:
        return ""
    return ("Per latent frame (NMSE(z) dB of each clip's frame, mean over clips; frame 0 decodes to the first "
            "pixel frame alone, frame t to the 4 up to pixel frame 4t): "
            + "; ".join(f"{name} {' / '.join(f'{v:.2f}' for v in values)}" for name, values in rows) + ".")


def _gains(title: str, before: dict, after: dict) -> str:
    """Per clip, the dB ``after`` gains over ``before`` (lower NMSE), sorted, with their median."""
    gains = sorted(a - b for a, b in zip(before["per_clip_db"], after["per_clip_db"], strict=True))
    return (f"Per clip, {title} (dB gained, sorted): " + ", ".join(f"{g:+.2f}" for g in gains)
            + f"; median {statistics.median(gains):+.2f} dB, {sum(g > 1 for g in gains)} of {len(gains)} clips "
            "gain more than 1 dB.")


def _recomputed(runs: list[dict], plans: list[dict]) -> str:
    """Where the predictions come from a later ``--memory-only`` run than the accuracy table, its commit."""
    shas = sorted({r["git_sha"] for r in plans} - {runs[0]["git_sha"]})
    if not shas:
        return ""
    return (f" Predictions recomputed with `python -m benchmarks.video_vaes --memory-only` at git "
            f"{', '.join(shas)}.")
