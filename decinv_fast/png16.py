"""16-bit colour PNGs at their own depth.

PIL opens a 16-bit RGB (or RGBA, or gray + alpha) PNG as 8 bits a sample, dropping the low byte of
every value. This reads such a file's samples itself (PNG specification: the IHDR, IDAT and IEND
chunks, zlib, the five row filters) so that ``decinv invert`` inverts the image the user saved, not
its 8-bit rounding. Only what PIL cannot read is read here: 16-bit grayscale and every 8-bit PNG
stay with PIL.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel: RGB, gray + alpha, RGBA


class PngError(ValueError):
    """A PNG file this reader cannot decode (the message says why)."""


def is_png16_colour(path: Path) -> bool:
    """Whether ``path`` starts as a PNG of 16-bit samples in colour type 2, 4 or 6 (RGB, gray + alpha,
    RGBA): the PNGs that PIL would read at 8 bits."""
    with open(path, "rb") as file:
        head = file.read(8 + 8 + 13)  # signature, then IHDR's length, type and 13 bytes of data
    if len(head) < 29 or head[:8] != SIGNATURE or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in CHANNELS


def read_png16(path: Path) -> np.ndarray:
    """The samples of a 16-bit colour PNG (see :func:`is_png16_colour`) -> ``(H, W, channels)`` uint16.

    Raises :class:`PngError` for an interlaced file, a truncated or corrupt one, or a failed checksum."""
    data = Path(path).read_bytes()
    header, idat = None, []
    at = len(SIGNATURE)
    while at + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if len(body) != length or len(data) < at + 12 + length:
            raise PngError(f"chunk {kind!r} is cut short")
        if zlib.crc32(kind + body) != struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0]:
            raise PngError(f"chunk {kind!r} fails its checksum")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        at += 12 + length
    else:
        raise PngError("no IEND chunk: the file is cut short")
    if header is None or not idat:
        raise PngError("no IHDR or no IDAT chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or colour not in CHANNELS:
        raise PngError(f"bit depth {depth}, colour type {colour}: not a 16-bit colour PNG")
    if interlace:
        raise PngError("interlaced (Adam7) 16-bit colour PNGs are not read; save it without interlacing")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as error:
        raise PngError(f"image data does not decompress ({error})") from error
    pixel = 2 * CHANNELS[colour]  # bytes per pixel
    if len(raw) != height * (1 + width * pixel):
        raise PngError(f"image data holds {len(raw)} bytes, {height * (1 + width * pixel)} expected")
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * pixel)
    image = unfilter(rows[:, 0], rows[:, 1:], pixel)
    return image.view(">u2").reshape(height, width, CHANNELS[colour]).astype(np.uint16)


def unfilter(filters: np.ndarray, rows: np.ndarray, pixel: int) -> np.ndarray:
    """Undo PNG's per-row filters: ``rows`` ``(H, width * pixel)`` filtered bytes, ``filters`` ``(H,)``
    their filter types (0 none, 1 sub, 2 up, 3 average, 4 Paeth), ``pixel`` bytes per pixel."""
    height, stride = rows.shape
    out = np.zeros((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for r in range(height):
        row, kind = rows[r], int(filters[r])
        if kind == 0:
            out[r] = row
        elif kind == 1:  # each byte plus the reconstructed byte one pixel to the left: a running sum per lane
            out[r] = (row.reshape(-1, pixel).astype(np.int64).cumsum(0) % 256).reshape(-1)
        elif kind == 2:
            out[r] = row + prior  # uint8 arithmetic wraps modulo 256, as the specification adds
        elif kind in (3, 4):
            out[r] = _sequential(row, prior, pixel, paeth=kind == 4)
        else:
            raise PngError(f"row {r} has filter type {kind} (0 to 4 exist)")
        prior = out[r]
    return out


def _sequential(row: np.ndarray, prior: np.ndarray, pixel: int, paeth: bool) -> np.ndarray:
    """The average and Paeth filters, which need each reconstructed byte before the next one."""
    x, up = row.tolist(), prior.tolist()
    out = [0] * len(x)
    for i in range(len(x)):
        left = out[i - pixel] if i >= pixel else 0
        if paeth:
            corner = up[i - pixel] if i >= pixel else 0
            estimate = left + up[i] - corner
            a, b, c = abs(estimate - left), abs(estimate - up[i]), abs(estimate - corner)
            predictor = left if a <= b and a <= c else up[i] if b <= c else corner
        else:
            predictor = (left + up[i]) // 2
        out[i] = (x[i] + predictor) & 0xFF
    return np.array(out, np.uint8)
