"""The ``decinv`` command line: images, folders, videos, outputs and one-line errors."""

import importlib.util
import json
import logging
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from cli_runs import read_latents, run_invert
from PIL import Image, ImageOps
from safetensors import SafetensorError

from decinv_fast import cli, cli_io, invert
from decinv_fast.cli import load_vae, main
from decinv_fast.demo import bundled_photo, pan_clip
from decinv_fast.options import AUTO, DEFAULT_LR


def test_invert_one_image_with_panel(tmp_path, photo_png):
    out, panel = tmp_path / "z.safetensors", tmp_path / "panel.png"
    assert main(["invert", str(photo_png), "--steps", "2", "--out", str(out), "--png", str(panel), "--quiet"]) == 0
    latents, meta = read_latents(out)
    assert latents.shape == (4, 4, 4)
    assert meta["method"] == "adam" and meta["steps"] == "2" and meta["vae"] == "fixture"
    assert Image.open(panel).size == (5 * 128, 14 + 128)  # 32x32 enlarged 4x: the titles fit their columns


def test_invert_with_the_self_stopping_method(tmp_path, photo_png):
    out = tmp_path / "z.safetensors"
    assert main(["invert", str(photo_png), "--steps", "4", "--method", "auto", "--out", str(out), "--quiet"]) == 0
    latents, meta = read_latents(out)
    assert latents.shape == (4, 4, 4) and meta["method"] == "auto"
    assert 1 <= int(meta["steps"]) <= 4
    vae = load_vae("fixture", torch.float32, "cpu")
    direct = invert(vae, np.asarray(Image.open(photo_png)), method="auto", steps=4)
    assert torch.equal(latents, direct.latents)  # the file records which iterate it holds and why it stopped
    assert meta["returned_step"] == str(int(direct.returned_step[0])) and meta["stop_reason"] == direct.stop_reason[0]


def test_invert_gradient_based_with_lbfgs(tmp_path, photo_png):
    out = tmp_path / "z.safetensors"
    args = ["invert", str(photo_png), "--method", "grad", "--lbfgs", "--steps", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    latents, meta = read_latents(out)
    direct = invert(load_vae("fixture", torch.float32, "cpu"), np.asarray(Image.open(photo_png)), method="grad",
                    optimizer="lbfgs", steps=3)
    assert torch.equal(latents, direct.latents) and meta["optimizer"] == "lbfgs"


def test_lbfgs_flag_needs_the_gradient_based_method(photo_png, capsys):
    assert main(["invert", str(photo_png), "--lbfgs", "--steps", "1", "--quiet"]) == 2
    assert "--lbfgs is grad's optimizer" in capsys.readouterr().err


def test_invert_folder_and_gif(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    clip = pan_clip(bundled_photo(), 3, 32)
    for i, frame in enumerate(clip):
        Image.fromarray(frame).save(folder / f"{i:02d}.png")
    out = tmp_path / "batch.safetensors"
    assert main(["invert", str(folder), "--steps", "1", "--out", str(out), "--quiet", "--method", "fsm"]) == 0
    assert read_latents(out)[0].shape == (3, 4, 4, 4)
    gif = tmp_path / "clip.gif"
    Image.fromarray(clip[0]).save(gif, save_all=True, append_images=[Image.fromarray(f) for f in clip[1:]])
    out = tmp_path / "video.safetensors"
    assert main(["invert", str(gif), "--steps", "1", "--out", str(out), "--quiet", "--chunk-frames", "2"]) == 0
    assert read_latents(out)[0].shape == (3, 4, 4, 4)  # one video of 3 frames: (F, C, h, w)


@pytest.mark.parametrize("args,message", [
    (["invert", "missing.png"], "no such file"),
    (["invert", "{bad_size}"], "error: {bad_size}: height 30 and width 32 must be multiples of 8"),
    (["invert", "{photo}", "--vae", "/nonexistent"], "config.json"),
    (["invert", "{photo}", "--steps", "1099511627776", "--tol", "1e-3"], "error: --steps 1099511627776: a run "
     "allocates its per-step table"),
])
def test_bad_input_is_one_line(tmp_path, photo_png, capsys, args, message):
    bad = tmp_path / "odd.png"
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(bad)
    args = [a.format(bad_size=bad, photo=photo_png) for a in args] + ["--quiet", "--out", str(tmp_path / "o.st")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    message = message.format(bad_size=bad)  # the API's images, named as the file given
    assert err.startswith("decinv: error:") and message in err and "\n" not in err, err


def test_secant_step_size_from_the_command_line(tmp_path, photo_png, capsys):
    out = tmp_path / "z.safetensors"
    assert main(["invert", str(photo_png), "--method", "fsm", "--lr", "auto", "--steps", "2", "--quiet",
                 "--out", str(out)]) == 0
    latents, meta = read_latents(out)
    assert latents.shape[0] == 4 and meta["lr"] == "auto" and meta["method"] == "fsm"
    assert 0.05 <= float(meta["secant_lr"]) <= 4.0  # one image: one sample's secant step size
    with pytest.raises(SystemExit):
        main(["invert", str(photo_png), "--lr", "fast", "--quiet", "--out", str(out)])
    assert "not a positive number or 'auto'" in capsys.readouterr().err
    assert main(["invert", str(photo_png), "--method", "adam", "--lr", "auto", "--quiet", "--out", str(out)]) == 2
    assert "error: --lr auto is for methods" in capsys.readouterr().err  # invert's own error, in the flags' names


@pytest.mark.parametrize("device,message", [("tpu", "not a torch device"), ("cuda:99", "CUDA device"),
                                            ("meta", "runs on cpu or cuda"), ("mps", "runs on cpu or cuda")])
def test_bad_device_is_a_usage_line_not_a_traceback(tmp_path, photo_png, capsys, device, message):
    with pytest.raises(SystemExit) as exited:  # argparse's own usage error, before any model loads
        main(["invert", str(photo_png), "--device", device, "--quiet", "--out", str(tmp_path / "o.st")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --device" in err and message in err


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "decinv_fast", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "invert" in proc.stdout and "demo" in proc.stdout


def test_warnings_are_one_line_each(tmp_path, photo_png):
    """A warning the run raises (here: no CUDA graphs on the CPU) prints as ``decinv: warning: ...``, as
    errors print as ``decinv: error: ...``, not as a Python source location and line."""
    out = tmp_path / "o.safetensors"
    proc = subprocess.run([sys.executable, "-m", "decinv_fast", "invert", str(photo_png), "--steps", "1", "--quiet",
                           "--cuda-graphs", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and out.exists()
    lines = proc.stderr.splitlines()
    assert [line for line in lines if "no CUDA graphs" in line][0].startswith("decinv: warning: ")
    assert "RuntimeWarning" not in proc.stderr and ".py:" not in proc.stderr


def test_clip_aware_flag(tmp_path):
    """A photo with a fifth of its pixels at 0 or 255: the flag changes the answer for fsm and is
    recorded; auto, clip-aware already, gives the same latents with or without it."""
    boosted = np.clip((bundled_photo()[:32, :32].astype(np.float64) - 128) * 2.5 + 128, 0, 255).astype(np.uint8)
    assert np.isin(boosted, (0, 255)).mean() > 0.2
    path = tmp_path / "boosted.png"
    Image.fromarray(boosted).save(path)
    runs = {}
    for method in ("fsm", "auto"):
        for flag in ([], ["--clip-aware"]):
            out = tmp_path / f"{method}{len(flag)}.safetensors"
            args = ["invert", str(path), "--steps", "3", "--method", method, "--out", str(out), "--quiet"]
            assert main(args + flag) == 0
            runs[method, bool(flag)] = read_latents(out)
    assert runs["fsm", False][1]["clip_aware"] == "False" and runs["fsm", True][1]["clip_aware"] == "True"
    assert (runs["fsm", True][0] - runs["fsm", False][0]).abs().max() > 1e-3
    assert runs["auto", False][1]["clip_aware"] == "True"
    assert torch.equal(runs["auto", True][0], runs["auto", False][0])


def test_stopping_options_reach_invert_and_the_metadata(tmp_path, photo_png):
    out = tmp_path / "z.safetensors"
    args = ["invert", str(photo_png), "--method", "fsm", "--steps", "12", "--keep-best", "--patience", "2",
            "--tol", "1e-9", "--out", str(out), "--quiet"]
    assert main(args) == 0
    latents, meta = read_latents(out)
    direct = invert(load_vae("fixture", torch.float32, "cpu"), np.asarray(Image.open(photo_png)), method="fsm",
                    steps=12, keep_best=True, patience=2, tol=1e-9)
    assert torch.equal(latents, direct.latents)
    assert direct.stop_reason == ["patience"]  # the run stops itself: the options were taken
    assert (meta["keep_best"], meta["patience"], meta["tol"]) == ("True", "2", "1e-09")
    assert meta["steps"] == str(direct.steps_run) and meta["stop_reason"] == "patience"


def test_auto_records_its_own_stopping(tmp_path, photo_png):
    out = tmp_path / "z.safetensors"
    assert main(["invert", str(photo_png), "--method", "auto", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    meta = read_latents(out)[1]
    assert (meta["keep_best"], meta["patience"], meta["tol"]) == ("True", "3", "None")


def test_speed_options_reach_invert(tmp_path, monkeypatch):
    """--chunk-frames auto plans the chunk; --attention, --compile-backend and --cuda-graphs are passed
    on (aot_eager traces without generating code; CUDA graphs on a CPU warn and run eagerly)."""
    clip = pan_clip(bundled_photo(), 3, 32)
    gif = tmp_path / "clip.gif"
    Image.fromarray(clip[0]).save(gif, save_all=True, append_images=[Image.fromarray(f) for f in clip[1:]])
    base = tmp_path / "base.safetensors"
    assert main(["invert", str(gif), "--steps", "2", "--out", str(base), "--quiet"]) == 0
    runs = {"chunk": ["--chunk-frames", "auto"], "attention": ["--attention", "math"],
            "compile": ["--compile-backend", "aot_eager"]}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.safetensors"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dynamo's notes on the CPU
            assert main(["invert", str(gif), "--steps", "2", "--out", str(out), "--quiet", *extra]) == 0
        torch.testing.assert_close(read_latents(out)[0], read_latents(base)[0], rtol=1e-4, atol=1e-5)
    assert read_latents(tmp_path / "chunk.safetensors")[1]["chunk_frames"] == "auto"
    assert read_latents(tmp_path / "compile.safetensors")[1]["compile"] == "aot_eager"
    assert read_latents(tmp_path / "attention.safetensors")[1]["attention"] == "math"
    out = tmp_path / "graphs.safetensors"
    with pytest.warns(RuntimeWarning, match="no CUDA graphs"):
        assert main(["invert", str(gif), "--steps", "2", "--out", str(out), "--quiet", "--cuda-graphs"]) == 0
    assert torch.equal(read_latents(out)[0], read_latents(base)[0])
    assert read_latents(out)[1]["cuda_graphs"] == "True"


@pytest.mark.parametrize("args,message", [(["--steps", "0"], "argument --steps: not a positive int: '0'"),
                                          (["--patience", "-1"], "argument --patience: not a positive int"),
                                          (["--tol", "nan"], "argument --tol: not a positive number: 'nan'"),
                                          (["--tol", "-1"], "argument --tol: not a positive number"),
                                          (["--lr", "-1"], "argument --lr: not a positive number or 'auto': '-1'"),
                                          (["--lr", "0"], "argument --lr: not a positive number or 'auto': '0'"),
                                          (["--lr", "inf"], "argument --lr: not a positive number or 'auto'")])
def test_bad_counts_are_usage_lines_before_anything_loads(tmp_path, photo_png, capsys, monkeypatch, args, message):
    from decinv_fast import cli

    monkeypatch.setattr(cli, "load_vae", lambda *a: pytest.fail("the VAE loaded before the options were checked"))
    with pytest.raises(SystemExit) as exited:
        main(["invert", str(photo_png), *args, "--quiet", "--out", str(tmp_path / "o.st")])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--frames", "0"])
    assert "argument --frames: not a positive int" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["0", "two", "-1"])
def test_bad_chunk_frames_is_a_usage_line(tmp_path, photo_png, capsys, spec):
    with pytest.raises(SystemExit) as exited:
        main(["invert", str(photo_png), "--chunk-frames", spec, "--quiet", "--out", str(tmp_path / "o.st")])
    assert exited.value.code == 2
    assert "not a positive number of frames or 'auto'" in capsys.readouterr().err


def _latents_of_the_picture_and_its_variants(tmp_path, variants, in_folder: str) -> tuple[torch.Tensor, dict]:
    """The latents of the 8-bit gray crop, and of each of ``variants`` (file name -> (pixels built from that
    crop, the PIL mode it must open in)) read alone, and of ``in_folder`` read in a folder beside an 8-bit RGB
    image (key ``"folder"``)."""
    gray = np.asarray(Image.fromarray(bundled_photo()[:32, :32]).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray8.png")
    for name, (make, mode) in variants.items():
        Image.fromarray(make(gray)).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
    reference = run_invert(tmp_path / "gray8.png", tmp_path / "8.st")[0]
    read = {name: run_invert(tmp_path / name, tmp_path / f"{name}.st")[0] for name in variants}
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / in_folder).rename(folder / f"a{Path(in_folder).suffix}")
    Image.fromarray(bundled_photo()[:32, :32]).save(folder / "b.png")  # an 8-bit RGB image beside it
    read["folder"] = run_invert(folder, tmp_path / "folder.st")[0][0]
    return reference, read


def test_sixteen_bit_grayscale_is_read_as_sixteen_bit(tmp_path):
    """A 16-bit grayscale PNG (PIL mode I;16) and a mode-I TIFF give the latents of the same picture in
    8 bits (value * 257 / 65535 = value / 255), alone and in a folder; convert("RGB") made them white."""
    wide = lambda gray: gray.astype(np.uint16) * 257  # noqa: E731
    reference, read = _latents_of_the_picture_and_its_variants(
        tmp_path, {"gray16.png": (wide, "I;16"), "gray32.tif": (lambda gray: wide(gray).astype(np.int32), "I")},
        in_folder="gray16.png")
    assert set(read) == {"gray16.png", "gray32.tif", "folder"}
    for latents in read.values():
        torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)


def test_float_and_big_endian_images_are_read_at_their_depth(tmp_path):
    """A float TIFF (PIL mode F) in [0, 1] and a big-endian 16-bit TIFF (I;16B) give the latents of the same
    picture in 8 bits, alone and in a folder; convert("RGB") clipped F to 0 and 1 (nearly black)."""
    reference, read = _latents_of_the_picture_and_its_variants(
        tmp_path, {"float.tif": (lambda gray: gray.astype(np.float32) / 255, "F"),
                   "big.tif": (lambda gray: (gray.astype(np.uint16) * 257).astype(">u2"), "I;16B")},
        in_folder="float.tif")
    assert set(read) == {"float.tif", "big.tif", "folder"}
    for latents in read.values():
        torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("values,message", [
    (np.full((32, 32), 200.0, np.float32), "values in [200, 200]; float images are read as [0, 1]"),
    (np.linspace(-0.5, 0.5, 32 * 32, dtype=np.float32).reshape(32, 32), "values in [-0.5, 0.5]"),
    (np.where(np.eye(32, dtype=bool), np.nan, 0.5).astype(np.float32), "NaN or infinite"),
])
def test_float_image_out_of_range_is_one_line_naming_the_file(tmp_path, capsys, values, message):
    Image.fromarray(values).save(tmp_path / "float.tif")
    assert main(["invert", str(tmp_path / "float.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'float.tif'}: float image") and message in err, err
    assert "\n" not in err


def test_signed_sixteen_bit_tiff_is_refused(tmp_path, capsys):
    """PIL opens a signed 16-bit TIFF as mode I; its values (at most 32767) were read as value / 65535."""
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "signed.tif", np.full((32, 32), 30000, np.int16))
    assert Image.open(tmp_path / "signed.tif").mode == "I"
    assert main(["invert", str(tmp_path / "signed.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'signed.tif'}: signed 16-bit image") and "\n" not in err


def _sixteen_bit_rgb_tiff(path, samples: np.ndarray) -> None:
    """An uncompressed little-endian RGB TIFF of 16-bit samples (PIL cannot write one)."""
    height, width, _ = samples.shape
    data = samples.astype("<u2").tobytes()
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd_at = 8 + len(data)
    bits_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if value is None:  # BitsPerSample: three SHORTs do not fit in the entry, which holds their offset
            field = struct.pack("<I", bits_at)
        else:
            field = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + field
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + data + ifd + struct.pack("<I", 0)
                     + struct.pack("<HHH", 16, 16, 16))


def test_sixteen_bit_colour_tiff_is_read_at_sixteen_bits_or_refused_without_tifffile(tmp_path, capsys, monkeypatch):
    """PIL opens a 16-bit RGB TIFF as 8-bit RGB: the low byte of every sample was lost without a word. With
    tifffile (scikit-image brings it) the samples are read exactly; without it the file is refused, saying
    what to install. The file is written by hand, not by tifffile."""
    samples = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 97 % 65536).astype(np.uint16)
    _sixteen_bit_rgb_tiff(tmp_path / "rgb16.tif", samples)
    opened = Image.open(tmp_path / "rgb16.tif")
    assert opened.mode == "RGB" and opened.tag_v2[258] == (16, 16, 16)  # what PIL makes of it
    if cli_io.tifffile_installed():
        np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgb16.tif"), samples.astype(np.float32) / 65535)
    monkeypatch.setitem(sys.modules, "tifffile", None)  # not installed
    assert main(["invert", str(tmp_path / "rgb16.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'rgb16.tif'}: 16-bit colour TIFF, which PIL reads at 8 bits")
    assert "pip install 'decinv-fast[tiff]' (tifffile)" in err and "16-bit PNG" in err and "\n" not in err


@pytest.mark.parametrize("writer", ["pil_int32", "tifffile_uint32"])
def test_thirty_two_bit_tiff_of_eight_bit_values_is_refused(tmp_path, capsys, writer):
    """A 32-bit integer TIFF holding 8-bit values was read as value / 65535: silently nearly black."""
    values = np.arange(32 * 32).reshape(32, 32) % 201  # 0..200
    if writer == "pil_int32":
        Image.fromarray(values.astype(np.int32)).save(tmp_path / "wide.tif")
    else:
        pytest.importorskip("tifffile").imwrite(tmp_path / "wide.tif", values.astype(np.uint32))
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    assert main(["invert", str(tmp_path / "wide.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'wide.tif'}: 32-bit integer image with no value above 200")
    assert "8-bit values?" in err and "\n" not in err
    assert not (tmp_path / "o.st").exists()


def test_thirty_two_bit_tiff_black_or_sixteen_bit_valued_is_read(tmp_path):
    """Black is black at any depth, and a value of 256 is beyond 8 bits: neither is ambiguous."""
    Image.fromarray(np.zeros((8, 8), np.int32)).save(tmp_path / "black.tif")
    Image.fromarray(np.full((8, 8), 256, np.int32)).save(tmp_path / "dim.tif")
    assert (cli_io.read_image(tmp_path / "black.tif") == 0).all()
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "dim.tif"), np.full((8, 8, 3), 256 / 65535, np.float32))


def test_out_of_range_integer_image_is_one_line(tmp_path, capsys):
    Image.fromarray(np.full((32, 32), 70000, np.int32)).save(tmp_path / "big.tif")
    assert main(["invert", str(tmp_path / "big.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    assert "only 8- and 16-bit" in capsys.readouterr().err


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.fromarray(bundled_photo()[:32, :48])  # 48 wide, 32 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 32 wide, 48 high
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    latents, _ = run_invert(tmp_path / "rotated.jpg", tmp_path / "z.st")
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg")).convert("RGB"))
    assert shown.shape == (48, 32, 3) and latents.shape == (4, 6, 4)
    direct = invert(load_vae("fixture", torch.float32, "cpu"), shown, steps=1)
    assert torch.equal(latents, direct.latents)
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "rotated.jpg").rename(folder / "rotated.jpg")
    assert torch.equal(run_invert(folder, tmp_path / "f.st")[0][0], direct.latents)


def test_output_paths_are_checked_before_the_run(tmp_path, photo_png, capsys, monkeypatch):
    def no_vae(*args):
        raise AssertionError("the VAE was loaded before the output paths were checked")

    monkeypatch.setattr(cli, "load_vae", no_vae)
    (tmp_path / "a_file").write_text("")
    bad = [["--out", str(tmp_path)], ["--out", str(tmp_path / "a_file" / "z.st")],
           ["--png", str(tmp_path / "panel.xyz")], ["--png", str(tmp_path)], ["--png", str(tmp_path / "panel.xbm")]]
    for extra in bad:
        args = ["invert", str(photo_png), "--quiet", "--out", str(tmp_path / "z.st"), *extra]
        assert main(args) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("decinv: error: --") and "\n" not in err, err
    assert err.endswith("PIL cannot write an RGB image as XBM ('.xbm'); use e.g. .png"), err  # XBM: 1-bit only


def test_panel_in_a_new_folder_and_write_errors(tmp_path, photo_png, capsys, monkeypatch):
    panel, out = tmp_path / "new" / "deeper" / "panel.png", tmp_path / "other" / "z.st"
    run_invert(photo_png, out, "--png", str(panel))
    assert Image.open(panel).size == (5 * 128, 14 + 128)  # 32x32 enlarged 4x: the titles fit their columns
    too_long = str(tmp_path / ("z" * 300 + ".safetensors"))
    assert main(["invert", str(photo_png), "--quiet", "--out", too_long]) == 2
    assert "not a usable file name" in capsys.readouterr().err

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)  # a failure only the write finds
    assert main(["invert", str(photo_png), "--steps", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: --out {out}: cannot write") and "\n" not in err


def test_metadata_records_what_ran(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    clip = pan_clip(bundled_photo(), 3, 32)
    for name, frame in zip(("10.png", "2.png", "1.png"), clip, strict=True):
        Image.fromarray(frame).save(folder / name)
    out = tmp_path / "z.st"
    args = ["--method", "fsm", "--keep-best", "--steps", "4", "--chunk-frames", "auto", "--dtype", "fp32"]
    assert main(["invert", str(folder), "--out", str(out), "--quiet", *args]) == 0
    latents, meta = read_latents(out)
    assert json.loads(meta["files"]) == ["1.png", "2.png", "10.png"]  # natural order, the batch's
    direct = invert(load_vae("fixture", torch.float32, "cpu"), clip[::-1].copy(), method="fsm", steps=4,
                    keep_best=True)
    assert torch.equal(latents, direct.latents)
    assert meta["layout"] == "batch,C,h,w" and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert (meta["lr"], meta["max_steps"], meta["steps"], meta["secant_lr"]) == (str(DEFAULT_LR["fsm"]), "4", "4", "-")
    assert meta["chunk_frames"] == "auto" and 1 <= int(meta["chunk"]) <= 3 and meta["backend"] == direct.backend
    returned = direct.returned_step.tolist()
    assert all(k < 4 for k in returned)  # keep_best: evaluated points, whose residual is known
    expected = [f"{float(direct.residual_history[k, i]):.6g}" for i, k in enumerate(returned)]
    assert meta["returned_residual"] == ",".join(expected)
    assert meta["last_step_residual"] == f"{float(direct.residuals[-1]):.6g}"
    meta = run_invert(folder / "1.png", tmp_path / "one.st", "--method", "auto", "--dtype", "bf16")[1]
    assert (meta["layout"], meta["dtype"], meta["lr"]) == ("C,h,w", "bfloat16", str(AUTO["lr"]))
    assert meta["returned_residual"] != "-"  # auto returns its best evaluated point


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is not None, reason="the notice needs accelerate absent")
def test_a_vae_folder_loads_without_the_accelerate_notice(tmp_path):
    load_vae("fixture", torch.float32, "cpu").save_pretrained(tmp_path / "vae")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        load_vae(str(tmp_path / "vae"), torch.float32, "cpu")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if "accelerate" in m]
