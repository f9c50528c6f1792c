"""The command line's files: reading an image, a folder of images or a video, and checking the output
paths before a run. Every problem is a :class:`UsageError` (shown by ``decinv`` as one line)."""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import png16
from .tiff_wide import TiffError, full_images, read_wide_tiff, tifffile_installed

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
FRAME_SUFFIXES = {".gif"}  # read frame by frame with PIL (so is an animated WebP or PNG)
FOLDER_SUFFIXES = IMAGE_SUFFIXES | FRAME_SUFFIXES  # a folder's files read as its batch's images
ANIMATIONS = {"GIF", "WEBP", "PNG"}  # PIL formats whose frames are an animation (not MPO's or TIFF's extra images)
VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mov", ".mkv"}  # read with imageio + ffmpeg
VIDEO_EXTRA = "pip install 'decinv-fast[video]'"
SIXTEEN_BIT = 65535
TIFF_SUFFIXES = {".tif", ".tiff"}
TIFFFILE_ADVICE = "pip install 'decinv-fast[tiff]' (tifffile), with which decinv reads it at its depth"


class UsageError(ValueError):
    """Bad input on the command line; shown as one line."""


def natural_key(path: Path) -> tuple:
    """Sort key of a folder's files: runs of digits compare as numbers (``2.png`` before ``10.png``),
    the rest case-insensitively; ties (``01.png``, ``1.png``) by the name itself."""
    parts = re.split(r"(\d+)", path.name)  # text, number, text, ...: the same kinds at the same places
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], path.name


@contextmanager
def _naming(path: Path):
    """PIL's errors reading one file (truncated, corrupt, a decompression bomb) -> a :class:`UsageError`
    naming the file (in a folder's batch, which one)."""
    from PIL import Image

    try:
        yield
    except UsageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc).strip() or type(exc).__name__
        raise UsageError(text if str(path) in text else f"{path}: {text}") from exc  # PIL's may name it already


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """One image file -> ``(H, W, 3)``: uint8, or float32 in [0, 1] for 16-bit and float images;
    ``(H, W, 4)`` with ``channels=4`` (a VAE of RGBA images, Qwen-Image 2.1's): its alpha kept, opaque
    where it has none, as ``convert("RGBA")`` converts.

    The EXIF orientation is applied (as diffusers' ``load_image`` does). Images are read at their own
    depth, not rounded to 8 bits: grayscale that ``convert("RGB")`` would clip at 255 (nearly all white),
    the same value in each channel, 16-bit (PIL modes ``I;16*``, and ``I``, which PIL also uses for
    16-bit files and 32-bit TIFFs) as ``value / 65535`` and float (mode ``F``, e.g. a 32-bit float TIFF)
    as it is, in [0, 1]; 16-bit colour PNGs (RGB, RGBA, gray + alpha), which PIL opens at 8 bits, by
    :mod:`.png16` as ``value / 65535`` (alpha dropped); 16-bit colour TIFFs, which PIL opens at 8 bits,
    and float colour, float16 and float64 TIFFs, which it cannot open, by :mod:`.tiff_wide` where
    tifffile is installed (else they are refused, saying so). Refused, naming the file: values outside
    those ranges, NaN or infinity, signed 16-bit TIFFs (no [0, 65535] reading) and 32-bit integer TIFFs
    whose values are at most 255, not all 0 (8-bit values, most likely: read as 16 bits, nearly black).
    Other modes are converted to RGB. A TIFF of several full-size images gives its first, said on stderr
    (thumbnails are not counted). A file PIL cannot read (truncated, corrupt) is an error naming it."""
    with _naming(path):
        return _read_image(path, channels)


def _read_image(path: Path, channels: int) -> np.ndarray:
    """:func:`read_image`, its errors not yet naming the file."""
    if png16.is_png16_colour(path):
        return _png16_pixels(path, channels)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return _pil_pixels(path, channels)
    pixels = _wide_tiff_pixels(path, channels)
    pixels = _pil_pixels(path, channels) if pixels is None else pixels
    if (count := full_images(path)) > 1:
        print(f"decinv: {path}: a TIFF of {count} images; reading the first (one image per file: save the others "
              "as files of a folder for a batch)", file=sys.stderr)
    return pixels


def _pil_pixels(path: Path, channels: int) -> np.ndarray:
    """An image PIL opens at its depth -> ``(H, W, channels)`` (the checks of :func:`read_image`)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        opened = Image.open(path)
    except UnidentifiedImageError:
        if path.suffix.lower() in TIFF_SUFFIXES and not tifffile_installed():
            raise UsageError(f"{path}: PIL cannot open this TIFF (float colour, float16 and float64 TIFFs are among "
                             f"those it cannot): {TIFFFILE_ADVICE}") from None
        raise
    with opened:
        bits, signed = _tiff_integer_samples(opened)
        image = ImageOps.exif_transpose(opened)
    if bits == 16 and signed:
        raise UsageError(f"{path}: signed 16-bit image; decinv reads unsigned 16-bit ones (value / {SIXTEEN_BIT}): "
                         "convert it to unsigned 16 bits or to float in [0, 1]")
    if bits == 16 and not image.mode.startswith("I"):  # PIL keeps 16 bits for grayscale only
        advice = "" if tifffile_installed() else f"{TIFFFILE_ADVICE}, or "  # installed: a layout it does not read
        raise UsageError(f"{path}: 16-bit colour TIFF, which PIL reads at 8 bits (mode {image.mode}), losing the low "
                         f"byte of every sample: {advice}save it as a 16-bit PNG")
    pixels = _pixels(image, path, channels)
    top = round(float(pixels[..., :3].max()) * SIXTEEN_BIT) if bits == 32 and image.mode == "I" else 0
    if 0 < top <= 255:
        raise UsageError(f"{path}: 32-bit integer image with no value above {top}: 8-bit values? read as 16-bit "
                         f"(value / {SIXTEEN_BIT}) it is nearly black; save it as 8 or 16 bits, or as float in [0, 1]")
    return pixels


def _png16_pixels(path: Path, channels: int) -> np.ndarray:
    """A 16-bit colour PNG (which PIL reads at 8 bits) -> ``(H, W, channels)`` float32 ``value / 65535``,
    its EXIF orientation applied as ``ImageOps.exif_transpose`` applies it; gray + alpha is gray in each
    colour channel; alpha as :func:`_oriented_pixels` keeps it."""
    from PIL import Image

    try:
        samples = png16.read_png16(path)
    except png16.PngError as error:
        raise UsageError(f"{path}: 16-bit colour PNG: {error}") from None
    with Image.open(path) as opened:
        orientation = opened.getexif().get(0x0112, 1)
    return _oriented_pixels(samples, orientation, channels) / SIXTEEN_BIT


def _wide_tiff_pixels(path: Path, channels: int) -> np.ndarray | None:
    """A TIFF that PIL cannot hold at its depth (see :mod:`.tiff_wide`) -> ``(H, W, channels)`` float32: 16-bit
    samples as ``value / 65535``, float ones as they are (checked to lie in [0, 1]), its orientation
    applied as for a PIL image; ``None`` for other TIFFs (and without tifffile)."""
    try:
        found = read_wide_tiff(path)
    except TiffError as error:
        raise UsageError(f"{path}: {error}") from None
    if found is None:
        return None
    samples, orientation = found
    if samples.dtype == np.uint16:
        return _oriented_pixels(samples, orientation, channels) / SIXTEEN_BIT
    pixels = _oriented_pixels(samples, orientation, channels)
    _check_unit_floats(pixels, path, f"float image ({samples.dtype} TIFF)")
    return pixels


def _oriented_pixels(samples: np.ndarray, orientation: int, channels: int) -> np.ndarray:
    """``(H, W, c)`` samples -> ``(H, W, channels)`` float32 (:func:`_in_channels`) with the EXIF/TIFF
    ``orientation`` applied as ``ImageOps.exif_transpose`` applies it."""
    pixels = _in_channels(samples, channels)
    return np.ascontiguousarray(ORIENTED[orientation](pixels) if orientation in ORIENTED else pixels,
                                dtype=np.float32)


def _in_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W, c)`` samples -> ``(H, W, channels)``: gray (+ alpha) is gray in each colour channel. Alpha
    (the 2nd sample of gray + alpha, the 4th of colour) is dropped for 3 channels, as ``convert("RGB")``
    drops it, and kept for 4, opaque (the samples' full scale) where there is none, as ``convert("RGBA")``
    does."""
    c = samples.shape[-1]
    pixels = samples[..., :3] if c >= 3 else np.repeat(samples[..., :1], 3, axis=-1)
    if channels != 4:
        return pixels
    full = np.iinfo(samples.dtype).max if samples.dtype.kind in "ui" else 1.0
    alpha = samples[..., 3:4] if c >= 4 else samples[..., 1:2] if c == 2 else np.full_like(samples[..., :1], full)
    return np.concatenate([pixels, alpha], axis=-1)


# EXIF orientation -> the array operation ImageOps.exif_transpose does (its PIL transpose method)
ORIENTED = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (PIL rotates counter-clockwise)
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}


def _tiff_integer_samples(image) -> tuple[int, bool]:
    """A TIFF's integer sample size in bits (0 for other files and float samples) and whether they are
    signed. PIL opens signed 16-bit and 32-bit TIFFs as mode ``I``, whatever range their values use."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return 0, False
    bits, kind = np.atleast_1d(tags.get(258, 0)), np.atleast_1d(tags.get(339, 1))  # BitsPerSample, SampleFormat
    if not ((kind == 1) | (kind == 2)).all() or len(set(bits.tolist())) != 1:  # 1: unsigned, 2: signed integer
        return 0, False
    return int(bits[0]), bool((kind == 2).all())


def _check_unit_floats(values: np.ndarray, path: Path, what: str) -> None:
    """Float pixels must be finite and in [0, 1]; else an error naming the file and the range found."""
    if not np.isfinite(values).all():
        raise UsageError(f"{path}: {what} with NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi > 1:
        raise UsageError(f"{path}: {what} with values in [{lo:.4g}, {hi:.4g}]; float images are read as [0, 1] "
                         "(rescale it, e.g. divide [0, 255] values by 255)")


def _pixels(image, path: Path, channels: int) -> np.ndarray:
    """A PIL image (or one frame) -> ``(H, W, channels)`` uint8, or float32 in [0, 1] (see :func:`read_image`)."""
    mode = image.mode
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        _check_unit_floats(values, path, "float image (PIL mode F)")
        return _in_channels(values[..., None], channels)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > SIXTEEN_BIT:
            raise UsageError(f"{path}: integer image (PIL mode {mode}) with values in [{lo:.0f}, {hi:.0f}]; "
                             f"only 8- and 16-bit ones ([0, {SIXTEEN_BIT}]) are read")
        return _in_channels(values[..., None] / SIXTEEN_BIT, channels)
    return np.asarray(image.convert("RGBA" if channels == 4 else "RGB"))



def read_folder(path: Path, channels: int = 3, video: bool = False) -> tuple[np.ndarray, list[str]]:
    """A folder's images, in natural order of their names -> ``(B, H, W, channels)`` and the names in batch
    order (``video``: ``(1, F, H, W, channels)``, the frames of one video, for ``--as-video``). One 16-bit or
    float image makes the whole batch float in [0, 1]. A folder holds
    still images: an animated GIF, WebP or PNG is refused, not read as its first frame; a single-frame
    GIF is an image like the others. Other files and broken links are skipped, named on stderr; hidden ones
    (names starting with ".", such as macOS's ``._a.png``) silently, whatever their suffix."""
    suffixes = FOLDER_SUFFIXES
    visible = _visible_entries(path)
    entries = [p for p in visible if p.is_file()]
    files = [p for p in entries if p.suffix.lower() in suffixes]
    if not files:
        raise UsageError(f"{path}: folder holds no images ({', '.join(sorted(suffixes))})")
    skipped = [p.name for p in entries if p.suffix.lower() not in suffixes]
    if skipped:
        print(f"decinv: {path}: skipping {len(skipped)} file(s) that are not images ({', '.join(skipped)}); "
              f"images are {', '.join(sorted(suffixes))}", file=sys.stderr)
    broken = [p.name for p in visible if p.is_symlink() and not p.exists()]
    if broken:
        print(f"decinv: {path}: skipping {len(broken)} broken link(s) ({', '.join(broken)})", file=sys.stderr)
    animated = [f"{p.name} ({n} frames)" for p in files if (n := _animation_frames(p)) > 1]
    if animated:
        raise UsageError(f"{path}: a folder is a batch of still images, but {', '.join(animated)} "
                         f"{'has' if len(animated) == 1 else 'have'} more than one frame; pass such a file on its "
                         "own to invert it as a video")
    images = [read_image(p, channels) for p in files]
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        sizes = ", ".join(f"{p.name} {im.shape[1]}x{im.shape[0]}" for p, im in zip(files, images, strict=True))
        what = "(one video's frames, --as-video)" if video else "(a batch)"
        raise UsageError(f"{path}: the images of a folder {what} must have one size; got {sizes}")
    stacked = _stack(images)
    return (stacked[None] if video else stacked), [p.name for p in files]


def _visible_entries(path: Path) -> list[Path]:
    """A folder's entries but its hidden ones (names starting with "."), in natural order of their names."""
    return sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=natural_key)


def _folder_entries(path: Path) -> list[Path]:
    """A folder's files but its hidden ones, in natural order of their names."""
    return [p for p in _visible_entries(path) if p.is_file()]


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Images of one size -> one array: uint8, or float32 in [0, 1] if any of them is float."""
    if any(im.dtype != np.uint8 for im in images):
        images = [im.astype(np.float32) / 255 if im.dtype == np.uint8 else im for im in images]
    return np.stack(images)


def read_frames(path: Path, channels: int = 3) -> np.ndarray:
    """Every frame of a GIF (or animated WebP or PNG) -> ``(1, F, H, W, channels)``, each frame read as
    :func:`read_image` reads a picture (without its EXIF orientation). PIL reads the frames of a 16-bit
    colour animated PNG at 8 bits (:mod:`.png16` reads stills only): said on stderr, not silently."""
    from PIL import Image, ImageSequence

    if png16.is_png16_colour(path):
        print(f"decinv: {path}: a 16-bit colour animated PNG, whose frames are read at 8 bits (PIL drops the low "
              "byte of every sample); for 16 bits pass the frames as an array to decinv_fast.invert", file=sys.stderr)
    with _naming(path), Image.open(path) as image:
        frames = [_pixels(frame, path, channels) for frame in ImageSequence.Iterator(image)]
    return _stack(frames)[None]  # a batch of one video


def read_video(path: Path, channels: int = 3) -> np.ndarray:
    """A video file -> ``(1, F, H, W, channels)`` uint8, with diffusers' ``load_video`` (imageio + ffmpeg,
    the ``video`` extra; opaque for 4 channels)."""
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"{path}: reading {path.suffix} video needs imageio and imageio-ffmpeg ({exc.name} is "
                         f"missing): {VIDEO_EXTRA}") from exc
    from diffusers.utils import load_video

    try:
        frames = load_video(str(path))
    except (OSError, RuntimeError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: cannot read it as a video ({first})") from exc
    if not frames:
        raise UsageError(f"{path}: the video has no frames")
    return np.stack([np.asarray(f.convert("RGBA" if channels == 4 else "RGB")) for f in frames])[None]


def _animation_frames(path: Path) -> int:
    """The frames of an animated GIF, WebP or PNG; 1 for other files (a phone's MPO JPEG holds a second
    image, a TIFF may hold a thumbnail page: neither is a frame of a video)."""
    from PIL import Image

    if path.suffix.lower() in TIFF_SUFFIXES:  # not opened here: PIL cannot open every TIFF read_image reads
        return 1
    with _naming(path), Image.open(path) as image:
        return getattr(image, "n_frames", 1) if image.format in ANIMATIONS else 1


def read_input(path: Path, channels: int = 3, as_video: bool = False) -> tuple[np.ndarray, list[str] | None]:
    """``decinv invert``'s input -> ``(images, file names)``: an image file ``(H, W, 3)``, a folder
    ``(B, H, W, 3)`` with its file names in batch order (``as_video``: the frames of one video,
    ``(1, F, H, W, 3)``), a video (a GIF, an animated WebP or PNG, a video file) ``(1, F, H, W, 3)`` (a
    single-frame GIF is a still image); file names only for a folder; 4 for 3 with ``channels=4`` (RGBA, see
    :func:`read_image`). Suffixes in any case."""
    if path.is_dir():
        return read_folder(path, channels, video=as_video)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if as_video:
        raise UsageError(f"--as-video reads a folder of images as one video; {path} is a file (an animated GIF, WebP "
                         "or PNG or a video file is read as one video without it)")
    suffix = path.suffix.lower()
    if suffix in FRAME_SUFFIXES or (suffix in IMAGE_SUFFIXES and _animation_frames(path) > 1):
        frames = read_frames(path, channels)
        return (frames[0, 0] if frames.shape[1] == 1 else frames), None  # a single-frame GIF: a still, as in a folder
    if suffix in IMAGE_SUFFIXES:
        return read_image(path, channels), None
    if suffix in VIDEO_SUFFIXES:
        return read_video(path, channels), None
    known = sorted(IMAGE_SUFFIXES | FRAME_SUFFIXES | VIDEO_SUFFIXES)
    raise UsageError(f"{path}: unknown file type {suffix!r} (known: {', '.join(known)})")


def check_output(flag: str, name: str) -> None:
    """``--out``/``--png`` before the run: a file name (not a folder) in a folder that exists or can be
    made (it is made now) and can be written to."""
    path = Path(name)
    try:
        folder = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise UsageError(f"{flag} {name}: not a usable file name ({exc.strerror or exc})") from exc
    if folder:
        raise UsageError(f"{flag} {name}: is a folder; give a file name in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {name}: cannot make its folder {path.parent} ({exc})") from exc
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{flag} {name}: folder {path.parent} is not writable")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: :func:`os.path.samefile` where both exist (links, a file system
    that ignores case), else their resolved paths compared."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _input_files(source: Path) -> list[Path]:
    """The files ``decinv invert`` reads of its input: the file, or a folder's images (not its hidden files)."""
    if source.is_dir():  # read_folder's selection
        return [p for p in _folder_entries(source) if p.suffix.lower() in FOLDER_SUFFIXES]
    return [source] if source.is_file() else []


def check_outputs(out: str, png: str | None, source: str | None = None) -> None:
    """Both output paths, and that PIL can write ``--png``'s image type (from its suffix); neither may be
    a file of the input ``source`` (it would be overwritten) nor the other one (the panel would replace the
    latents)."""
    check_output("--out", out)
    if png is not None:
        from PIL import Image

        check_output("--png", png)
        suffix = Path(png).suffix.lower()
        kind = Image.registered_extensions().get(suffix)
        if kind not in Image.SAVE:
            raise UsageError(f"--png {png}: PIL cannot write image type {suffix or '(no suffix)'!r}; use e.g. .png")
        if not _writes_rgb(kind):
            raise UsageError(f"--png {png}: PIL cannot write an RGB image as {kind} ({suffix!r}); use e.g. .png")
        if _same_file(Path(out), Path(png)):
            raise UsageError(f"--png {png} is also the --out file; the panel would overwrite the latents: choose "
                             "another path for one of them")
    inputs = [] if source is None else _input_files(Path(source))
    for flag, name in (("--out", out), ("--png", png)):
        if name is not None and any(_same_file(Path(name), p) for p in inputs):
            what = "the input file" if inputs == [Path(source)] else f"an input image (of folder {source})"
            raise UsageError(f"{flag} {name} is {what}; choose another path")


def _writes_rgb(kind: str) -> bool:
    """Whether PIL writes a small RGB image (the panel's mode) as image type ``kind`` (some, e.g. XBM, take
    other modes only)."""
    import io

    from PIL import Image

    try:
        Image.new("RGB", (16, 16)).save(io.BytesIO(), format=kind)
    except (OSError, ValueError, KeyError):
        return False
    return True

