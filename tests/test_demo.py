"""``decinv demo`` (the README's first command), shrunk to two steps and a two-frame clip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decinv_fast.demo import METHODS, format_table, run_demo


def test_demo_runs_every_method_and_writes_its_figures(tmp_path):
    told: list[str] = []
    rows = run_demo(tmp_path, steps=2, frames=2, frame_size=32, chunk_frames=1, progress=False, log=told.append)
    methods = ["encoder-only"] + [name for name, _ in METHODS]
    assert [line.split(",")[0] for line in told] == [f"{case}: {name}" for case in ("image 256x256", "video 2x32x32")
                                                     for name, _ in METHODS]  # a word as each row is done
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


def test_pan_clip_slides_square_crops_across_the_middle_of_the_photograph():
    from decinv_fast.demo import bundled_photo, pan_clip

    photo = bundled_photo()
    assert photo.shape == (256, 384, 3) and photo.dtype == np.uint8
    clip = pan_clip(photo, 3, 32)
    assert clip.shape == (3, 32, 32, 3)
    y = (256 - 32) // 2
    for frame, x in zip(clip, (0, 176, 352), strict=True):  # the first crop at the left edge, the last at the right
        assert np.array_equal(frame, photo[y:y + 32, x:x + 32])


def test_run_case_scores_each_method_against_the_protocols_target(fixture_vae, monkeypatch):
    """Each row is its method's NMSE(z) against z* and PSNR of its decoding against the 8-bit x, the
    encoder-only row is E(x) (not E of the photo), and steps is the batch's mean of the steps each ran;
    contrast-boosted crops, whose decodings overshoot [-1, 1], tell PSNR's estimate from its truth."""
    import decinv_fast.demo as demo
    from decinv_fast import decode, encode, nmse_db
    from decinv_fast.protocol import make_target
    from decinv_fast.testbed import to_tensor
    from decinv_fast.visual import psnr

    pixels = (to_tensor(demo.bundled_photo()[None, 96:128, 96:128]) * 1.6).clamp(-1, 1)
    real_invert = demo.invert

    def invert(*args, **kwargs):
        result = real_invert(*args, **kwargs)
        result.stopped_at = torch.tensor([1, 2])  # as two samples stopping at different steps would
        return result

    monkeypatch.setattr(demo, "invert", invert)
    rows, curves, latents, target = demo.run_case(fixture_vae, "case", pixels, 2, None, False)
    expected = make_target(fixture_vae, pixels, seed=0)
    assert torch.equal(target.latents, expected.latents) and torch.equal(target.images, expected.images)
    assert torch.equal(latents["encoder-only"], encode(fixture_vae, target.images))
    assert [r.method for r in rows] == ["encoder-only"] + [name for name, _ in METHODS]
    for row in rows:
        z = latents[row.method].float()
        assert row.nmse_db == pytest.approx(nmse_db(z, target.latents), abs=1e-6)
        assert row.psnr_db == pytest.approx(psnr(decode(fixture_vae, z), target.images), abs=1e-6)
    assert [r.steps for r in rows] == [None] + [1.5] * len(METHODS)
    assert all(len(c["nmse_db"]) == 2 for c in curves.values())


def test_format_table_puts_each_value_in_its_column():
    from decinv_fast.demo import Row

    rows = [Row("image 8x8", "encoder-only", -12.25, 28.5, None, 0.25, None),
            Row("image 8x8", "adam", -20.0, 31.25, 1.5, 2.0, 3 * 2**20)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["case", "method", "NMSE(z)", "dB", "PSNR", "dB", "steps", "seconds", "peak", "MiB"]
    assert lines[2].split() == ["image", "8x8", "encoder-only", "-12.25", "28.50", "–", "0.25", "n/a"]
    assert lines[3].split() == ["image", "8x8", "adam", "-20.00", "31.25", "1.5", "2.00", "3.0"]


@pytest.mark.parametrize("quiet", [False, True])
def test_the_command_line_demo_says_each_row_without_a_terminal(tmp_path, monkeypatch, capsys, quiet):
    import decinv_fast.demo as demo
    from decinv_fast.cli import main

    def fake_demo(out, *, steps, frames, progress, log):
        assert not progress  # pytest's stderr is no terminal: no bar
        if log is not None:
            log("image 256x256: gradient-free fp32, 1.0 s")
        return []

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    assert main(["demo", "--out", str(tmp_path / "d"), *(["--quiet"] if quiet else [])]) == 0
    said = "decinv demo: image 256x256: gradient-free fp32, 1.0 s" in capsys.readouterr().err
    assert said != quiet
