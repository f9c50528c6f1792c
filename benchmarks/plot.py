"""Plots from the JSON results only (no measuring here): PNGs into ``benchmarks/results/``.

* ``pareto.png``: mean NMSE(z) in dB vs wall time and vs peak memory, every series of
  ``accuracy_vs_time.json`` with its step counts, and the Pareto frontier of each family
  (gradient-free, gradient-based): the points no other point of the family beats on both axes.
* ``memory_vs_frames.png``: peak memory vs frames from ``memory_vs_frames.json``; filled markers are
  measured, hollow ones predicted by the planner.

    python -m benchmarks.plot
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.report_stopping import AUTO_RUNS, EVERYWHERE  # noqa: E402

FAMILY_STYLE = {"gradient-free": dict(color="tab:blue"), "gradient-based": dict(color="tab:red")}
FAMILY_COLORS = {"gradient-free": ("tab:blue", "tab:cyan", "tab:green", "tab:purple", "tab:olive", "tab:gray"),
                 "gradient-based": ("tab:red", "tab:orange", "tab:brown", "tab:pink")}
SERIES_MARKERS = "osD^v<>ph"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower x and lower y), sorted by x."""
    front, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def _plain_ticks(axis) -> None:
    """Log axes labelled 0.5, 1, 2, 5, 10 ... instead of powers of ten."""
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, path, rect=(0, 0, 1, 1)) -> None:
    """Lay out within ``rect`` (figure fractions; leave room there for a figure legend) and write."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _device_line(records: list[dict]) -> str:
    r = records[0]
    mode = r["metrics"].get("mode")
    return f"{r['device']}, torch {r['torch']}, {r['git_sha']}" + (f", {mode} run" if mode == "quick" else "")


def plot_pareto(path) -> bool:
    records = [r for r in harness.load("accuracy_vs_time") if "series" in r["metrics"]]
    if not records:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    start = next(r["metrics"] for r in records if r["metrics"]["series"] == "encoder-only")
    series = [s for s in dict.fromkeys(r["metrics"]["series"] for r in records) if s != "encoder-only"]
    panels = ((axes[0], "seconds", "wall time (s, CPU)"), (axes[1], "peak_bytes", "peak memory (MiB, CPU allocator)"))
    for ax, key, label in panels:
        scale = 1 if key == "seconds" else 1 / 2**20
        ax.plot(start[key] * scale, start["nmse_db"], "k*", ms=12, label="encoder-only E(x)")
        family_points: dict[str, list[tuple[float, float]]] = {}
        used: dict[str, int] = {}
        for i, name in enumerate(series):
            ms = sorted((r["metrics"] for r in records if r["metrics"]["series"] == name), key=lambda m: m["steps"])
            ms = [m for m in ms if m.get(key) is not None]
            if not ms:
                continue
            family = ms[0]["family"]
            colors = FAMILY_COLORS.get(family, ("k",))
            color = colors[used.setdefault(family, 0) % len(colors)]
            used[family] += 1
            xs, ys = [m[key] * scale for m in ms], [m["nmse_db"] for m in ms]
            family_points.setdefault(family, []).extend(zip(xs, ys, strict=True))
            ax.plot(xs, ys, marker=SERIES_MARKERS[i % len(SERIES_MARKERS)], lw=1, alpha=0.8,
                    ls="-" if family == "gradient-free" else "--", label=name, color=color)
            for m, x, y in zip(ms, xs, ys, strict=True):
                ax.annotate(str(m["steps"]), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        for family, points in family_points.items():
            front = pareto_front(points)
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", lw=2.5, alpha=0.35,
                    label=f"Pareto frontier, {family}", **FAMILY_STYLE.get(family, {}))
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
        ax.set_xlabel(label)
        ax.set_ylabel("mean NMSE(z) (dB)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="best")
    shape = records[0]["shape"]
    fig.suptitle(f"Decoder inversion, fixture VAE, {shape[0]} held-out crops {shape[2]}x{shape[3]} "
                 f"(numbers next to points: steps)\n{_device_line(records)}", fontsize=9)
    _save(fig, path)
    return True


def plot_memory(path) -> bool:
    records = [r for r in harness.load("memory_vs_frames") if "series" in r["metrics"]
               and r["metrics"].get("kind") != "gpu prediction"]
    if not records:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.8))
    series = list(dict.fromkeys(r["metrics"]["series"] for r in records))
    for i, name in enumerate(series):
        ms = sorted((r["metrics"] for r in records if r["metrics"]["series"] == name), key=lambda m: m["frames"])
        color = "tab:red" if name == "gradient-based" else plt.cm.Blues(0.45 + 0.5 * i / max(1, len(series) - 1))
        xs, ys = [m["frames"] for m in ms], [m["peak_bytes"] / 2**20 for m in ms]
        ax.plot(xs, ys, color=color, lw=1.2, label=name)
        for m, x, y in zip(ms, xs, ys, strict=True):
            ax.plot(x, y, "o", color=color, mfc="white" if m["predicted"] else color, ms=7)
    ax.plot([], [], "ko", label="measured (fresh process, 1 step)")
    ax.plot([], [], "ko", mfc="white", label="predicted by the planner")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["metrics"]["frames"] for r in records}))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _plain_ticks(ax.yaxis)
    ax.set_xlabel("frames")
    ax.set_ylabel("peak memory added by the call (MiB, CPU allocator)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    size = records[0]["metrics"]["size"]
    ax.set_title(f"SD-2.1 VAE layout (random weights), {size}x{size} frames, fp32, one step\n"
                 f"{_device_line(records)}", fontsize=9)
    _save(fig, path)
    return True


def plot_stopping(path) -> bool:
    """NMSE(z) vs E∘D evaluations (top) and vs wall time (bottom) for every series of ``stopping.json``,
    one column per VAE and crop size."""
    records = harness.load("stopping")
    if not records:
        return False
    cases = list(dict.fromkeys((r["metrics"]["vae"], r["metrics"]["size"]) for r in records))
    fig, axes = plt.subplots(2, len(cases), figsize=(5.2 * len(cases), 7.6), squeeze=False)
    for col, (vae, size) in enumerate(cases):
        rows = [r["metrics"] for r in records if (r["metrics"]["vae"], r["metrics"]["size"]) == (vae, size)]
        rows = [m for m in rows if not m.get("out_of_sample")]  # other crops: a table line, not a curve
        for row, (x_key, x_label) in enumerate((("evaluations", "decoder+encoder evaluations"),
                                                 ("seconds", "wall time (s, CPU)"))):
            ax = axes[row][col]
            _stopping_panel(ax, rows, x_key)
            ax.set(xscale="log", xlabel=x_label, ylabel="mean NMSE(z) [dB]", title=f"{vae}, {size}x{size}")
            _plain_ticks(ax.xaxis)
            ax.grid(alpha=0.3)
    fig.suptitle(_device_line(records), fontsize=8)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7, frameon=False)
    _save(fig, path, rect=(0, 0.09, 1, 1))  # room for the legend under the panels
    return True


def _stopping_panel(ax, rows: list[dict], x_key: str) -> None:
    """One VAE's series against ``x_key`` (``"evaluations"`` or ``"seconds"``)."""
    ax.axhline(rows[0]["encoder_only_db"], color="gray", ls=":", label="encoder-only")
    for m in (m for m in rows if m.get("reference")):
        ax.axhline(m["nmse_db"][0], color="tab:olive", ls="-.", label="clip-aware pixel least squares (gradient-based)")
    for m in (m for m in rows if m.get("gradient_based")):
        ax.plot(m[x_key], m["nmse_db"], color="tab:olive", ls=":", marker=".", label=f"{m['series']} (gradient-based)")
    candidates = (r for r in rows if r["series"] not in ("adam", *AUTO_RUNS) and not r.get("reference")
                  and not r.get("gradient_based"))
    for i, m in enumerate(candidates):
        ax.plot(m[x_key], m["nmse_db"], marker=SERIES_MARKERS[i % len(SERIES_MARKERS)], ms=3, label=m["series"],
                color=plt.cm.tab20(i % 20))  # the default cycle repeats after 10 series
    adam = sorted((m[x_key][0], m["nmse_db"][0]) for m in rows if m["series"] == "adam")
    ax.plot(*zip(*adam, strict=True), "k--o", ms=4, label="adam (paper), one run per count")
    for m in (m for m in rows if m["series"] == "auto"):
        ax.plot(m[x_key], m["nmse_db"], "r*" if m["cap"] <= 10 else "m*", ms=14,
                label=f"auto, at most {m['cap']} steps (stops on its own)")
    for m in (m for m in rows if m["series"] == EVERYWHERE):
        ax.plot(m[x_key], m["nmse_db"], "rx" if m["cap"] <= 10 else "mx", ms=9,
                label=f"{EVERYWHERE}, at most {m['cap']} steps (auto's rule before)")


def plot_gradient_memory(path=None) -> bool:
    """Peak memory and time vs sampling steps for every method of ``gradient_memory.json``."""
    records = harness.load("gradient_memory")
    if not records:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"autograd 2M": dict(color="tab:pink"), "autograd": dict(color="tab:red"),
              "AdjointDEIS-1": dict(color="tab:blue"), "AdjointDEIS-2M": dict(color="tab:cyan"),
              "reversible": dict(color="tab:green")}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = sorted((r["metrics"] for r in records if r["method"] == method), key=lambda m: m["steps"])
        style = next((s for key, s in styles.items() if method.startswith(key)), {})
        line = dict(marker="o", linestyle="--" if "cache" in method else "-", label=method, **style)
        if "BDIA" in method and method.startswith("autograd"):
            line.update(marker="s", color="tab:orange")
        steps = [m["steps"] for m in rows]
        axes[0].plot(steps, [m["peak_bytes"] / 2**20 for m in rows], **line)
        axes[1].plot(steps, [m["seconds"] for m in rows], **line)
    for ax, label in zip(axes, ("peak memory (MiB, CPU allocator, beyond weights)", "wall time (s)"), strict=True):
        ax.set_xlabel("sampling steps N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("gradient of a loss on z0 w.r.t. z_T and text through N steps -- " + _device_line(records),
                 fontsize=9)
    _save(fig, path or harness.RESULTS / "gradient_memory.png")
    return True


def main() -> list[str]:
    written = []
    for name, fn in (("pareto.png", plot_pareto), ("memory_vs_frames.png", plot_memory),
                     ("stopping.png", plot_stopping), ("gradient_memory.png", plot_gradient_memory)):
        path = harness.RESULTS / name
        try:
            made = fn(path)
        except (KeyError, IndexError, StopIteration) as exc:  # a partial or failed run
            print(f"skipped {name}: results incomplete ({type(exc).__name__}: {exc})")
            continue
        if made:
            written.append(str(path))
            print(f"wrote {path}")
        else:
            print(f"skipped {name}: no results yet")
    return written


if __name__ == "__main__":
    main()
