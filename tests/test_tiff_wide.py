"""TIFFs that PIL cannot hold at their depth (16-bit colour, float colour, float16 / float64 gray), read
with tifffile (``decinv_fast/tiff_wide.py``), and refused with advice where it is missing."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from cli_runs import run_invert
from PIL import Image

from decinv_fast import cli_io
from decinv_fast.cli import main
from decinv_fast.demo import bundled_photo

tifffile = pytest.importorskip("tifffile")  # scikit-image, a development dependency, brings it


def _rgb16(seed: int = 0, shape=(6, 9, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_sixteen_bit_colour_is_read_exactly(tmp_path, planar):
    """Both sample layouts (pixel-interleaved and one plane per channel) give value / 65535."""
    samples = _rgb16()
    data = samples if planar == "contig" else np.moveaxis(samples, -1, 0)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb", planarconfig=planar)
    assert Image.open(tmp_path / "rgb.tif").mode == "RGB"  # PIL: 8 bits
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgb.tif"), samples.astype(np.float32) / 65535)


def test_alpha_is_dropped(tmp_path):
    samples = _rgb16(shape=(5, 7, 4))
    tifffile.imwrite(tmp_path / "rgba.tiff", samples, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgba.tiff"),
                                  samples[..., :3].astype(np.float32) / 65535)


def test_alpha_is_kept_for_an_rgba_vae(tmp_path):
    """``channels=4`` (Qwen-Image 2.1's VAE): 16-bit RGBA keeps its alpha, 16-bit RGB and float RGB are opaque."""
    samples = _rgb16(shape=(5, 7, 4))
    tifffile.imwrite(tmp_path / "rgba.tiff", samples, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "rgb.tiff", samples[..., :3], photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tiff", samples[..., :3] / np.float32(65535), photometric="rgb")
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgba.tiff", 4), samples.astype(np.float32) / 65535)
    for name in ("rgb.tiff", "float.tiff"):
        read = cli_io.read_image(tmp_path / name, 4)
        np.testing.assert_allclose(read[..., :3], samples[..., :3].astype(np.float32) / 65535, rtol=1e-6)
        assert (read[..., 3] == 1).all(), name


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_colour_and_gray_are_read_as_they_are(tmp_path, dtype):
    """Float colour TIFFs (and float16 / float64 gray ones) PIL cannot open at all; float32 gray is PIL's mode
    F and stays with PIL. Values come back as float32 of what was saved."""
    values = np.random.default_rng(1).random((6, 9, 3)).astype(dtype)
    tifffile.imwrite(tmp_path / "rgb.tif", values, photometric="rgb")
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgb.tif"), values.astype(np.float32))
    tifffile.imwrite(tmp_path / "gray.tif", values[..., 0], photometric="minisblack")
    gray = values[..., :1].astype(np.float32).repeat(3, axis=-1)
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "gray.tif"), gray)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_as_pil_applies_it_to_an_eight_bit_tiff(tmp_path, orientation):
    """The TIFF orientation tag turns a 16-bit picture as PIL's exif_transpose turns the same picture saved
    at 8 bits (which PIL reads): value * 257 / 65535 = value / 255."""
    eight = np.random.default_rng(2).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    tag = [(274, "H", 1, orientation, True)]
    tifffile.imwrite(tmp_path / "eight.tif", eight, photometric="rgb", extratags=tag)
    tifffile.imwrite(tmp_path / "wide.tif", eight.astype(np.uint16) * 257, photometric="rgb", extratags=tag)
    by_pil = cli_io.read_image(tmp_path / "eight.tif")
    assert by_pil.dtype == np.uint8 and by_pil.shape[:2] == ((8, 5) if orientation > 4 else (5, 8))
    np.testing.assert_allclose(cli_io.read_image(tmp_path / "wide.tif"), by_pil / 255, rtol=1e-6, atol=0)


@pytest.mark.parametrize("values,message", [
    (np.full((4, 4, 3), 2.0), r"float image \(float64 TIFF\) with values in \[2, 2\]; float images are read as"),
    (np.where(np.eye(4, dtype=bool)[..., None], np.inf, 0.5).repeat(3, -1), r"float image \(float32 TIFF\) with NaN"),
])
def test_a_float_colour_tiff_out_of_range_is_one_line_naming_it(tmp_path, capsys, values, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, values.astype(np.float32 if np.isinf(values).any() else np.float64), photometric="rgb")
    assert main(["invert", str(path), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {path}: ") and "\n" not in err
    assert re.search(message, err), err


def test_without_tifffile_a_float_colour_tiff_says_what_to_install(tmp_path, capsys, monkeypatch):
    """PIL's own error for it was "cannot identify image file"; the advice names tifffile."""
    tifffile.imwrite(tmp_path / "rgb.tif", np.full((4, 4, 3), 0.5, np.float32), photometric="rgb")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    assert main(["invert", str(tmp_path / "rgb.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'rgb.tif'}: PIL cannot open this TIFF") and "\n" not in err
    assert "pip install 'decinv-fast[tiff]' (tifffile)" in err


def test_a_sixteen_bit_tiff_inverts_as_its_eight_bit_original_alone_and_in_a_folder(tmp_path):
    """The same picture as an 8-bit PNG and as a 16-bit colour TIFF (value * 257) gives the same latents."""
    photo = bundled_photo()[:32, :32]
    Image.fromarray(photo).save(tmp_path / "eight.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in (tmp_path / "wide.tif", folder / "a.tif"):
        tifffile.imwrite(path, photo.astype(np.uint16) * 257, photometric="rgb")
    Image.fromarray(photo).save(folder / "b.png")  # an 8-bit image beside it
    reference = run_invert(tmp_path / "eight.png", tmp_path / "eight.st")[0]
    torch.testing.assert_close(run_invert(tmp_path / "wide.tif", tmp_path / "wide.st")[0], reference,
                               rtol=1e-5, atol=1e-5)
    batch = run_invert(folder, tmp_path / "folder.st")[0]
    torch.testing.assert_close(batch[0], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[1], reference, rtol=1e-5, atol=1e-5)


def test_other_tiffs_stay_with_pil(tmp_path):
    """8-bit colour, 16-bit and float32 gray TIFFs are read by PIL, as before (tiff_wide declines them)."""
    from decinv_fast.tiff_wide import read_wide_tiff

    files = {"rgb8.tif": np.zeros((4, 4, 3), np.uint8), "gray16.tif": np.zeros((4, 4), np.uint16),
             "gray32f.tif": np.zeros((4, 4), np.float32)}
    for name, values in files.items():
        tifffile.imwrite(tmp_path / name, values)
        assert read_wide_tiff(tmp_path / name) is None
        assert (cli_io.read_image(tmp_path / name) == 0).all()


def test_a_float_colour_tiff_in_a_folder_is_read(tmp_path):
    """A folder checks each file for animation frames with PIL, which cannot open this TIFF: TIFFs are not
    opened for that (they are never animations)."""
    values = np.random.default_rng(3).random((4, 4, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="rgb")
    Image.fromarray((values * 255).astype(np.uint8)).save(tmp_path / "b.png")
    images, names = cli_io.read_input(tmp_path)
    assert names == ["a.tif", "b.png"] and images.dtype == np.float32
    np.testing.assert_array_equal(images[0], values)


def test_a_png_named_tif_stays_readable_and_a_broken_wide_tiff_is_one_line(tmp_path, capsys):
    """tifffile only takes what it recognises: a PNG saved as .tif is PIL's, as before. A 16-bit colour TIFF
    whose image data is cut short is an error naming the file."""
    picture = np.random.default_rng(4).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "png.tif", format="PNG")
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "png.tif"), picture)
    tifffile.imwrite(tmp_path / "cut.tif", _rgb16(shape=(64, 64, 3)), photometric="rgb")
    whole = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[:len(whole) // 2])
    assert main(["invert", str(tmp_path / "cut.tif"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'cut.tif'}: uint16 TIFF that tifffile cannot decode (")
    assert "\n" not in err


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32], ids=["pil", "tifffile-16bit", "tifffile-float"])
def test_a_tiff_of_several_images_gives_its_first_and_says_so(tmp_path, capsys, dtype):
    """The other pages were dropped without a word; now stderr says how many there are. A reduced-resolution
    page (a thumbnail) is not an image of its own and says nothing."""
    scale = {np.uint8: 1, np.uint16: 257, np.float32: 1 / 255}[dtype]
    pages = [(np.full((6, 6, 3), v) * scale).astype(dtype) for v in (10, 200, 90)]
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for page in pages:
            tif.write(page, photometric="rgb")
    first = cli_io.read_image(tmp_path / "stack.tif")
    np.testing.assert_allclose(first, cli_io.read_image(_single(tmp_path, pages[0])), rtol=0, atol=0)
    assert f"decinv: {tmp_path / 'stack.tif'}: a TIFF of 3 images; reading the first" in capsys.readouterr().err
    with tifffile.TiffWriter(tmp_path / "thumbnail.tif") as tif:
        tif.write(pages[0], photometric="rgb")
        tif.write(pages[1][:3, :3], photometric="rgb", subfiletype=1)
    np.testing.assert_allclose(cli_io.read_image(tmp_path / "thumbnail.tif"), first, rtol=0, atol=0)
    assert capsys.readouterr().err == ""


def _single(folder, page: np.ndarray):
    path = folder / "single.tif"
    tifffile.imwrite(path, page, photometric="rgb")
    return path
