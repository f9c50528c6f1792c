"""TIFFs that PIL cannot hold at their depth, read with ``tifffile`` where it is installed.

PIL opens a 16-bit colour TIFF as 8-bit RGB (the low byte of every sample is lost), and cannot open
float colour TIFFs or float16 / float64 grayscale ones at all. ``tifffile`` (``pip install 'decinv-fast[tiff]'``;
scikit-image brings it) reads them at their own depth. Every other TIFF stays with PIL, which reads it
at its depth already. Only the first image of a file is read, as PIL does (:func:`full_images`
counts the others, so that the command line can say so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDE_COLOUR = (np.uint16, np.float16, np.float32, np.float64)  # colour samples PIL cannot hold
WIDE_GRAY = (np.float16, np.float64)  # grayscale samples PIL cannot open (float32 is its mode F)
RGB, MINISBLACK = 2, 1  # TIFF PhotometricInterpretation
ORIENTATION = 274  # the TIFF tag, as EXIF's 0x0112
NEW_SUBFILE_TYPE = 254  # bit 0: a reduced-resolution version of another image (a thumbnail)


class TiffError(ValueError):
    """A TIFF this reader recognises as its own but cannot decode (the message says why)."""


def tifffile_installed() -> bool:
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return False
    return True


def read_wide_tiff(path: Path) -> tuple[np.ndarray, int] | None:
    """``(samples (H, W, channels), orientation)`` of a TIFF that PIL cannot hold at its depth (see the
    module doc), in the file's dtype, with its orientation tag (1 if none); ``None`` for every other
    file, and when tifffile is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError):  # not a TIFF to tifffile (a PNG named .tif): PIL's
        return None
    with tif:
        page = tif.pages.first if len(tif.pages) else None
        if page is None or page.dtype is None:  # no image, or samples of a kind numpy has no dtype for
            return None
        photometric, dtype, axes = int(page.photometric), np.dtype(page.dtype), page.axes
        wide = (photometric == RGB and dtype.type in WIDE_COLOUR) or \
            (photometric == MINISBLACK and dtype.type in WIDE_GRAY)
        if not wide:
            return None
        tag = page.tags.get(ORIENTATION)
        orientation = int(tag.value) if tag is not None else 1
        try:
            samples = page.asarray()
        except (tifffile.TiffFileError, OSError, ValueError, ImportError, RuntimeError) as error:
            raise TiffError(f"{dtype} TIFF that tifffile cannot decode ({error})") from None
    if axes == "SYX":  # planar configuration "separate": one plane per sample
        samples = np.moveaxis(samples, 0, -1)
    elif axes == "YX":
        samples = samples[..., None]
    elif axes != "YXS":
        raise TiffError(f"{dtype} TIFF of layout {axes!r}; decinv reads one image of rows x columns x samples")
    if photometric == RGB and samples.shape[-1] < 3:
        raise TiffError(f"RGB TIFF with {samples.shape[-1]} sample(s) per pixel")
    return (samples if photometric == RGB else samples[..., :1]), orientation  # extra samples: alpha


def full_images(path: Path) -> int:
    """How many full-resolution images a TIFF holds: its pages, less the reduced-resolution ones
    (thumbnails; NewSubfileType bit 0). PIL counts them where it opens the file, tifffile where not;
    1 when neither can."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format != "TIFF":  # e.g. a PNG saved as .tif
                return 1
            kinds = []
            for i in range(getattr(image, "n_frames", 1)):
                image.seek(i)
                kinds.append(int(image.tag_v2.get(NEW_SUBFILE_TYPE, 0)))
    except (UnidentifiedImageError, OSError, EOFError):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                kinds = [int(page.subfiletype) for page in tif.pages]
        except (ImportError, OSError, ValueError):
            return 1
    return max(1, sum(1 for kind in kinds if not kind & 1))
