"""16-bit colour PNGs are read at 16 bits (PIL reads them at 8): decinv_fast/png16.py and the CLI.

The files are written by a small encoder here, from the PNG specification's filter definitions
(every filter type, each colour type PIL would truncate), and, where imageio-ffmpeg is installed, by
ffmpeg's own PNG encoder.
"""

from __future__ import annotations

import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch
from cli_runs import run_invert
from PIL import Image, ImageOps

from decinv_fast import cli_io, png16
from decinv_fast.cli import main
from decinv_fast.demo import bundled_photo


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    a, b, c = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
    return left if a <= b and a <= c else up if b <= c else corner


def _filtered(raw: np.ndarray, prior: np.ndarray, kind: int, pixel: int) -> bytes:
    """One row of raw bytes filtered by ``kind`` (the specification's forward filters)."""
    out = bytearray(len(raw))
    for i, x in enumerate(raw.tolist()):
        left = int(raw[i - pixel]) if i >= pixel else 0
        up = int(prior[i])
        corner = int(prior[i - pixel]) if i >= pixel else 0
        predictor = (0, left, up, (left + up) // 2, _paeth(left, up, corner))[kind]
        out[i] = (x - predictor) % 256
    return bytes([kind]) + bytes(out)


def write_png16(path, samples: np.ndarray, colour: int, exif: bytes | None = None, interlace: int = 0) -> None:
    """``samples`` ``(H, W, channels)`` uint16 as a 16-bit PNG of colour type ``colour``; row ``r``
    uses filter type ``r % 5``."""
    height, width, channels = samples.shape
    rows = samples.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    prior = np.zeros(rows.shape[1], np.uint8)
    data = b""
    for r in range(height):
        data += _filtered(rows[r], prior, r % 5, channels * 2)
        prior = rows[r]
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, interlace)
    extra = _chunk(b"eXIf", exif) if exif else b""
    path.write_bytes(png16.SIGNATURE + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(data))
                     + _chunk(b"IEND", b""))


def _samples(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (height, width, channels), dtype=np.uint16)


@pytest.mark.parametrize("few_levels", [False, True])  # True: bytes of 0, 1, 2 only, where Paeth's ties decide
@pytest.mark.parametrize("colour,channels", [(2, 3), (6, 4), (4, 2)])
def test_every_filter_and_colour_type_is_read_exactly(tmp_path, colour, channels, few_levels):
    samples = _samples(11, 7, channels)
    if few_levels:
        samples = samples % 3 * 257
    write_png16(tmp_path / "a.png", samples, colour)
    assert png16.is_png16_colour(tmp_path / "a.png")
    read = png16.read_png16(tmp_path / "a.png")
    assert read.dtype == np.uint16 and read.shape == samples.shape
    np.testing.assert_array_equal(read, samples)


def test_pil_drops_the_low_bytes_the_cli_keeps_them(tmp_path):
    samples = _samples(8, 8, 3)
    write_png16(tmp_path / "a.png", samples, 2)
    assert np.asarray(Image.open(tmp_path / "a.png")).dtype == np.uint8  # what PIL would have given
    pixels = cli_io.read_image(tmp_path / "a.png")
    assert pixels.dtype == np.float32 and pixels.shape == (8, 8, 3)
    np.testing.assert_array_equal(pixels, samples.astype(np.float32) / 65535)


def test_alpha_is_dropped_and_gray_alpha_is_gray(tmp_path):
    samples = _samples(5, 6, 4)
    write_png16(tmp_path / "rgba.png", samples, 6)
    write_png16(tmp_path / "la.png", samples[..., :2], 4)
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgba.png"), samples[..., :3] / np.float32(65535))
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "la.png"),
                                  np.repeat(samples[..., :1], 3, axis=-1) / np.float32(65535))


def test_alpha_is_kept_for_an_rgba_vae(tmp_path):
    """``channels=4`` (Qwen-Image 2.1's VAE): RGBA and gray + alpha keep their alpha, RGB is opaque."""
    samples = _samples(5, 6, 4)
    write_png16(tmp_path / "rgba.png", samples, 6)
    write_png16(tmp_path / "la.png", samples[..., :2], 4)
    write_png16(tmp_path / "rgb.png", samples[..., :3], 2)
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "rgba.png", 4), samples / np.float32(65535))
    gray_alpha = np.concatenate([np.repeat(samples[..., :1], 3, axis=-1), samples[..., 1:2]], axis=-1)
    np.testing.assert_array_equal(cli_io.read_image(tmp_path / "la.png", 4), gray_alpha / np.float32(65535))
    rgb = cli_io.read_image(tmp_path / "rgb.png", 4)
    np.testing.assert_array_equal(rgb[..., :3], samples[..., :3] / np.float32(65535))
    assert (rgb[..., 3] == 1).all()


def test_other_pngs_stay_with_pil(tmp_path, photo_png):
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    assert not png16.is_png16_colour(photo_png) and not png16.is_png16_colour(tmp_path / "gray16.png")
    (tmp_path / "short.png").write_bytes(png16.SIGNATURE)
    assert not png16.is_png16_colour(tmp_path / "short.png")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_as_pil_applies_it(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = bundled_photo()[:6, :10]
    Image.fromarray(stored).save(tmp_path / "eight.png", exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "eight.png")).convert("RGB"))
    body = exif.tobytes()
    write_png16(tmp_path / "wide.png", stored.astype(np.uint16) * 257, 2, exif=body.removeprefix(b"Exif\x00\x00"))
    assert Image.open(tmp_path / "wide.png").getexif().get(0x0112) == orientation
    read = cli_io.read_image(tmp_path / "wide.png")
    assert read.shape == shown.shape, (orientation, read.shape, shown.shape)
    np.testing.assert_array_equal(np.round(read * 255).astype(np.uint8), shown)


def test_a_sixteen_bit_picture_inverts_as_its_eight_bit_original(tmp_path, photo_png):
    """value * 257 / 65535 = value / 255: the same latents as the 8-bit file, alone and in a folder."""
    write_png16(tmp_path / "wide.png", np.asarray(Image.open(photo_png)).astype(np.uint16) * 257, 2)
    reference, _ = run_invert(photo_png, tmp_path / "ref.st")
    latents, _ = run_invert(tmp_path / "wide.png", tmp_path / "wide.st")
    torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "wide.png").rename(folder / "a.png")
    Image.open(photo_png).save(folder / "b.png")
    batch, _ = run_invert(folder, tmp_path / "folder.st")
    torch.testing.assert_close(batch[0], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[1], reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("damage,message", [
    ("interlaced", "interlaced (Adam7)"),
    ("checksum", "fails its checksum"),
    ("cut", "cut short"),
    ("filter", "filter type 7"),
])
def test_a_file_it_cannot_read_is_one_line_naming_it(tmp_path, capsys, damage, message):
    path = tmp_path / "bad.png"
    write_png16(path, _samples(4, 4, 3), 2, interlace=1 if damage == "interlaced" else 0)
    data = bytearray(path.read_bytes())
    if damage == "checksum":
        data[-20] ^= 0xFF  # inside the IDAT chunk's data
    elif damage == "cut":
        data = data[:-30]
    elif damage == "filter":
        header_end = 8 + 25
        idat_body = bytes(data[header_end + 8:-12 - 4])
        rows = bytearray(zlib.decompress(idat_body))
        rows[0] = 7
        data = data[:header_end] + _chunk(b"IDAT", zlib.compress(bytes(rows))) + _chunk(b"IEND", b"")
    path.write_bytes(bytes(data))
    assert main(["invert", str(path), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {path}: 16-bit colour PNG: ") and message in err, err
    assert "\n" not in err


def test_ffmpeg_written_sixteen_bit_png_is_read_exactly(tmp_path):
    """An encoder that is not ours: ffmpeg's, with its adaptive ('mixed') row filters."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    samples = (np.random.default_rng(1).integers(0, 2048, (24, 20, 3)).cumsum(1) % 65536).astype(np.uint16)
    (tmp_path / "raw").write_bytes(samples.astype("<u2").tobytes())
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb48le", "-s", "20x24", "-i",
                    str(tmp_path / "raw"), "-frames:v", "1", "-pred", "mixed", "-pix_fmt", "rgb48be",
                    str(tmp_path / "ff.png")], check=True)
    assert png16.is_png16_colour(tmp_path / "ff.png")
    np.testing.assert_array_equal(png16.read_png16(tmp_path / "ff.png"), samples)


def test_a_sixteen_bit_animated_png_is_read_at_eight_bits_and_says_so(tmp_path, capsys):
    """PIL reads an animated PNG's frames at 8 bits (the high byte); png16 reads stills only. The frames are
    read as PIL reads them, with a line on stderr saying the low bytes are lost (an 8-bit one says nothing)."""
    frames = [_samples(4, 6, 3, seed) for seed in (1, 2)]
    width, height = 6, 4

    def frame_control(sequence: int) -> bytes:
        return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0))

    def stream(samples: np.ndarray) -> bytes:
        rows = samples.astype(">u2").view(np.uint8).reshape(height, -1)
        return zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))  # filter 0 on every row

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    apng = tmp_path / "clip.png"
    apng.write_bytes(png16.SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"acTL", struct.pack(">II", 2, 0))
                     + frame_control(0) + _chunk(b"IDAT", stream(frames[0])) + frame_control(1)
                     + _chunk(b"fdAT", struct.pack(">I", 2) + stream(frames[1])) + _chunk(b"IEND", b""))
    video, names = cli_io.read_input(apng)
    assert names is None and video.shape == (1, 2, 4, 6, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video[0], np.stack(frames) >> 8)
    assert "clip.png: a 16-bit colour animated PNG, whose frames are read at 8 bits" in capsys.readouterr().err
    eight = tmp_path / "eight.png"
    pictures = [Image.fromarray((f >> 8).astype(np.uint8)) for f in frames]
    pictures[0].save(eight, save_all=True, append_images=pictures[1:])
    np.testing.assert_array_equal(cli_io.read_input(eight)[0], video)
    assert capsys.readouterr().err == ""
