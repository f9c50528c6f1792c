"""``decinv demo`` (the README's first command), shrunk to two steps and a two-frame clip."""

from __future__ import annotations

import math

import pytest

from decinv_fast.demo import METHODS, format_table, run_demo


def test_demo_runs_every_method_and_writes_its_figures(tmp_path):
    rows = run_demo(tmp_path, steps=2, frames=2, frame_size=32, chunk_frames=1, progress=False)
    methods = ["encoder-only"] + [name for name, _ in METHODS]
    assert [r.method for r in rows] == methods * 2  # the image, then the clip
    assert all(math.isfinite(r.nmse_db) and math.isfinite(r.psnr_db) for r in rows)
    assert all(r.steps is None if r.method == "encoder-only" else 1 <= r.steps <= 2 for r in rows)
    image = {r.method: r for r in rows[:len(methods)]}
    assert image["gradient-free auto fp32"].nmse_db < image["encoder-only"].nmse_db - 1.0
    assert (tmp_path / "panel.png").is_file() and (tmp_path / "convergence.png").is_file()
    table = format_table(rows)
    assert all(name in table for name in methods)


@pytest.mark.parametrize("kwargs, name", [(dict(frames=0), "frames"), (dict(steps=-1), "steps"),
                                          (dict(chunk_frames=2.5), "chunk_frames")])
def test_demo_bad_arguments_are_named_before_any_work(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be an int >= 1"):
        run_demo(tmp_path / "never", progress=False, **kwargs)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("frame_size", [100, 4, 264])
def test_demo_frame_size_is_checked_before_any_work(tmp_path, monkeypatch, frame_size):
    """Not a multiple of 8, or larger than the bundled photo's height allows for the pan: refused up front,
    naming frame_size and its range, before the fixture VAE is loaded or any inversion runs."""
    import decinv_fast.demo as demo

    def no_work(*args, **kwargs):
        raise AssertionError("work started before frame_size was checked")

    monkeypatch.setattr(demo, "load_fixture_vae", no_work)
    monkeypatch.setattr(demo, "run_case", no_work)
    with pytest.raises(ValueError, match=rf"^frame_size must be a multiple of 8 .* in \[8, 256\] .*got {frame_size}$"):
        run_demo(tmp_path / "never", steps=1, frames=2, frame_size=frame_size, progress=False)
    assert not (tmp_path / "never").exists()


def test_demo_without_matplotlib_says_so_before_any_work(tmp_path, monkeypatch, capsys):
    """matplotlib is the demo extra, not a dependency: without it the demo ran the still image's
    methods (minutes) and then died in convergence_plot with a traceback; now it is refused up front,
    naming the extra, and the CLI prints it as one line."""
    import sys

    import decinv_fast.demo as demo
    from decinv_fast.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("work started before matplotlib was looked for")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as after `pip install decinv-fast`
    monkeypatch.setattr(demo, "load_fixture_vae", no_work)
    monkeypatch.setattr(demo, "run_case", no_work)
    with pytest.raises(ImportError, match=r"matplotlib, which is not installed: pip install 'decinv-fast\[demo\]'"):
        run_demo(tmp_path / "never", steps=1, frames=1, frame_size=32, progress=False)
    assert not (tmp_path / "never").exists()
    assert main(["demo", "--out", str(tmp_path / "never"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decinv: error: the demo draws convergence.png with matplotlib") and "Traceback" not in err


def test_convergence_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """It switched the process to Agg (matplotlib.use), which broke plt.show() in a notebook that had
    drawn it; it now draws on a Figure of its own."""
    import matplotlib

    from decinv_fast.visual import convergence_plot

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        path = convergence_plot(tmp_path / "c.png", {"adam": {"nmse_db": [-20.0, -21.0], "residual": [0.1, 0.05]}})
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert path.read_bytes().startswith(b"\x89PNG")
