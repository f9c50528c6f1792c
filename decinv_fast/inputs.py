"""Turn whatever the user passed as ``images`` into checked frames in [-1, 1].

Accepted: float tensors in [-1, 1] shaped ``(3, H, W)``, ``(B, 3, H, W)`` or videos
``(B, F, 3, H, W)``; integer tensors in [0, 255] of the same shapes; a PIL image, a list of them (a
batch of images) or a list of lists of them (a batch of videos: what diffusers video pipelines
return as ``.frames``); NumPy arrays ``(H, W, 3)`` (one image), ``(B, H, W, 3)`` (a batch of images:
an image pipeline's ``output_type="np"``) or ``(B, F, H, W, 3)`` (a batch of videos: a video
pipeline's), uint8 in [0, 255] or float in [0, 1]; a list of tensors or NumPy arrays of one shape
(stacked as a batch; each item one image, or one video: ``(F, 3, H, W)`` / ``(F, H, W, 3)``).
NumPy arrays read as tensors do, channels last: one video is ``video[None]``, a batch of one.
Internally, ``Frames`` that :func:`to_frames` made pass again as they are (their values are not re-read).
For a VAE of RGBA images (Qwen-Image 2.1's) read 4 for 3: PIL images are converted to RGBA, as its
pipelines convert them (opaque where they have no alpha).
Every rejection is a ``ValueError``/``TypeError`` that names the argument and says what to do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from .options import caller_stacklevel, check_finite

# Decoder outputs overshoot [-1, 1] a little; values beyond this are another convention (e.g. [0, 255]).
FLOAT_RANGE_LIMIT = 1.5
PIXEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class Frames:
    """Checked pixels as frames ``(B * F, 3, H, W)`` plus how to give the latents their shape back;
    for a VAE that encodes whole videos, as videos ``(B, 3, F, H, W)`` (``videos``, see :func:`as_videos`)."""

    pixels: torch.Tensor
    batch: int
    frames: int | None  # frames per video; None for still images
    squeezed: bool  # the input had no batch dimension (one image or one video)
    videos: bool = False  # pixels are whole videos (B, 3, F, H, W), one per sample

    @property
    def frames_per_row(self) -> int:
        """Frames in one row of ``pixels`` (what an encoder/decoder call takes per row)."""
        return self.frames_per_video if self.videos else 1

    @property
    def frames_per_video(self) -> int:
        return self.frames or 1

    def latent_shape(self, frame_latent_shape: torch.Size) -> tuple[int, ...]:
        """Shape of the latents for this input, from the shape of one row's latent (a frame's, or with
        ``videos`` a whole video's)."""
        lead = (self.batch,) if self.frames is None or self.videos else (self.batch, self.frames)
        return lead + tuple(frame_latent_shape)

    def restore(self, latents: torch.Tensor) -> torch.Tensor:
        """Drop the batch dimension again if the user gave none."""
        return latents[0] if self.squeezed else latents


def _from_uint8_hwc(array: np.ndarray, wide: bool) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1], as diffusers converts PIL
    (float64 when ``wide``: a float64 run's pixels are not rounded to float32 on the way)."""
    return _from_unit_hwc(array.astype(np.float64 if wide else np.float32) / 255.0, wide)


def _from_unit_hwc(array: np.ndarray, wide: bool) -> torch.Tensor:
    """float ``(..., H, W, 3)`` in [0, 1] -> float32 (float64 when ``wide``) ``(..., 3, H, W)`` in [-1, 1]
    (diffusers' way)."""
    from diffusers.image_processor import VaeImageProcessor  # here: diffusers takes seconds to import

    lead = array.shape[:-3]
    # contiguous: torch.from_numpy refuses the negative strides of a flipped view
    flat = np.ascontiguousarray(array.reshape((-1,) + array.shape[-3:]), dtype=np.float64 if wide else np.float32)
    pixels = VaeImageProcessor.normalize(VaeImageProcessor.numpy_to_pt(flat))
    return pixels.reshape(lead + pixels.shape[1:])


def _from_pil(images, wide: bool, channels: int | None) -> tuple[torch.Tensor, bool]:
    """PIL images as their pipelines convert them: to RGB, or to RGBA (opaque where they have no alpha)
    for a VAE of 4-channel images (Qwen-Image 2.1's)."""
    from PIL import Image

    single = isinstance(images, Image.Image)
    items = [images] if single else list(images)
    sizes = {im.size for im in items}
    if len(sizes) != 1:
        raise ValueError(f"images: all PIL images must have the same size, got {sorted(sizes)}")
    if min(sizes.pop()) == 0:
        raise ValueError(f"images: empty PIL image (size {items[0].size})")
    for im in items:  # convert() would clip 16-bit and float samples to 8 bits without a word
        if im.mode.startswith("I") or im.mode == "F":
            raise ValueError(f"images: PIL mode {im.mode!r} holds more than 8 bits a sample, which converting to "
                             "RGB would lose; pass a float tensor or array in [-1, 1] (for 16 bits: "
                             "np.asarray(im) / 65535 * 2 - 1) or use the command line, which reads them whole")
    mode = "RGBA" if channels == 4 else "RGB"
    arrays = np.stack([np.asarray(_converted(im, mode)) for im in items])
    return _from_uint8_hwc(arrays, wide), single


def _converted(im, mode: str):
    """``im.convert(mode)``, or a ValueError naming ``images`` and the mode PIL cannot convert from (``La``,
    grey with premultiplied alpha: ``im.convert("LA")`` first)."""
    try:
        return im.convert(mode)
    except ValueError as exc:
        hint = ' (im.convert("LA"))' if im.mode == "La" else ""
        raise ValueError(f"images: PIL cannot convert mode {im.mode!r} to {mode} ({exc}); convert the image to a "
                         f"mode it can first{hint}") from exc


def _from_numpy(array: np.ndarray, wide: bool, channels: int | None) -> tuple[torch.Tensor, bool]:
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise TypeError(f"images: NumPy images must be uint8 in [0, 255] or float in [0, 1]; got dtype {array.dtype}")
    c = channels or (4 if array.shape[-1:] == (4,) else 3)  # callables (channels unknown) take RGB or RGBA
    if array.ndim not in (3, 4, 5) or array.shape[-1] != c:
        raise ValueError(
            f"images: NumPy images must be (H, W, {c}), (B, H, W, {c}) images or (B, F, H, W, {c}) videos"
            f"{' (RGBA: this VAE takes 4 channels)' if c == 4 else ''}; got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError("images: empty array")
    if array.dtype == np.uint8:
        pixels = _from_uint8_hwc(array, wide)
    else:
        check_finite("images", array, "pixel value(s)")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"images: float NumPy pixels must lie in [0, 1] (diffusers' output_type='np'), got "
                             f"range [{lo:.3g}, {hi:.3g}]; divide [0, 255] values by 255, or pass [-1, 1] pixels "
                             "as a torch tensor")
        pixels = _from_unit_hwc(array, wide)
    # (H, W, 3) is one image; (B, H, W, 3) a batch of images; (B, F, H, W, 3) a batch of videos.
    return (pixels[None], True) if array.ndim == 3 else (pixels, False)


def _from_tensor(images: torch.Tensor, wide: bool) -> tuple[torch.Tensor, bool]:
    check_dense("images", images)
    if images.dim() not in (3, 4, 5):
        raise ValueError(
            "images: expected (B, 3, H, W) images or (B, F, 3, H, W) videos, "
            f"got a tensor of shape {tuple(images.shape)}"
        )
    if images.numel() == 0:
        raise ValueError(f"images: empty batch (shape {tuple(images.shape)})")
    images = images.detach()  # the checks below read values; the run never differentiates through them
    if images.dtype not in PIXEL_DTYPES:
        raise TypeError(f"images: unsupported dtype {images.dtype}; use float in [-1, 1] or uint8")
    if not images.is_floating_point():
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"images: integer pixels must lie in [0, 255], got range [{lo}, {hi}]")
        images = images.to(torch.float64 if wide else torch.float32) / 255.0 * 2.0 - 1.0
    else:
        check_finite("images", images, "pixel value(s)")
        lo, hi = float(images.min()), float(images.max())
        if lo < -FLOAT_RANGE_LIMIT or hi > FLOAT_RANGE_LIMIT:
            raise ValueError(
                f"images: float pixels must lie in [-1, 1] (a decoder's overshoot to +-{FLOAT_RANGE_LIMIT} is taken), "
                f"got range [{lo:.6g}, {hi:.6g}]; "
                "for [0, 1] images pass images * 2 - 1, for [0, 255] pass images / 127.5 - 1"
            )
        # a bright [-1, 1] image can do this too, hence a warning, not an error; a uniform one (e.g. mid-grey,
        # all zero) is left alone
        if 0 <= lo < hi <= 1:
            warnings.warn("images: every float pixel lies in [0, 1], but float tensors are read as [-1, 1] (the "
                          "VAE's range); if these are [0, 1] images, e.g. a pipeline's output_type='pt', pass "
                          "images * 2 - 1", UserWarning, stacklevel=caller_stacklevel())
    return (images[None], True) if images.dim() == 3 else (images, False)


def _check_channels(images, c: int, channels: int | None) -> None:
    """``c`` (dim -3) must be the VAE's input channels, if known."""
    if channels is None or c == channels:
        return
    hint = ""
    if isinstance(images, torch.Tensor) and images.shape[-1] == channels:
        hint = (f"; tensors are channels-first, (B, {channels}, H, W), and this one looks channels-last: pass "
                "images.movedim(-1, -3)")
    elif c == 3 and channels == 4:
        hint = ("; this VAE takes RGBA images (Qwen-Image 2.1's): add an opaque alpha channel, 1 in [-1, 1] (255 as "
                "uint8), as its pipelines convert RGB images (PIL images are converted so here)")
    elif isinstance(images, torch.Tensor) and c == 4:
        hint = ("; 4 channels look like latents (output_type='latent'): invert takes images (RGBA ones: this VAE "
                "takes RGB, drop the alpha, images[..., :3, :, :])")
    raise ValueError(f"images: expected {channels} channels, got {c} (shape {tuple(images.shape)}){hint}")


def check_loaded(device: torch.device | None) -> None:
    """An error unless the VAE's weights are somewhere (``device``: its device, ``None`` for a callable pair)."""
    if device is not None and device.type == "meta":
        raise ValueError("the VAE is on the meta device: its weights were never loaded (load them, or move it "
                         "with .to_empty() and load a state dict)")


def to_frames(images, *, device: torch.device | None, dtype: torch.dtype | None,
              spatial_factor: int | None, channels: int | None) -> Frames:
    """Validate ``images`` and return them as frames on ``device`` in ``dtype``."""
    check_loaded(device)  # whatever the images' kind
    if isinstance(images, list | tuple) and len(images) == 0:
        raise ValueError("images: empty batch (an empty list)")
    if isinstance(images, Frames):  # checked already (invert_to_noise hands its frames on): not read again
        return _checked_again(images, device, dtype, spatial_factor, channels)
    wide = dtype == torch.float64  # integer and NumPy pixels are converted in float32, in float64 for float64 runs
    images = _stacked(images, wide, channels)
    if isinstance(images, torch.Tensor):
        _check_device(images.device, device)
        if images.dim() in (3, 4, 5):
            _check_channels(images, images.shape[-3], channels)  # before the range: latents are not pixels
        pixels, squeezed = _from_tensor(images, wide)
    elif isinstance(images, np.ndarray):
        pixels, squeezed = _from_numpy(images, wide, channels)
    elif _is_pil(images):
        pixels, squeezed = _from_pil(images, wide, channels)
    elif isinstance(images, list | tuple) and all(_is_pil(video) and not _is_pil_image(video) for video in images):
        # a list of lists of frames: a batch of videos
        videos = [_from_pil(video, wide, channels)[0] for video in images]
        if len({v.shape for v in videos}) != 1:
            raise ValueError(f"images: the videos differ in frames or size: {sorted({tuple(v.shape) for v in videos})}")
        pixels, squeezed = torch.stack(videos), False
    else:
        raise TypeError(
            "images must be a tensor (B, 3, H, W) / (B, F, 3, H, W), a PIL image, a list of them or a list of "
            f"lists of them (videos), a NumPy array, or a list of tensors or arrays; got {type(images).__name__}"
        )
    frames = pixels.shape[1] if pixels.dim() == 5 else None
    batch = pixels.shape[0]
    pixels = pixels.flatten(0, 1) if frames is not None else pixels
    if pixels.shape[0] == 0:
        raise ValueError("images: empty batch")
    _check_size(images, pixels, spatial_factor, channels)
    pixels = pixels.to(device=device or pixels.device, dtype=dtype or pixels.dtype).contiguous()
    return Frames(pixels, batch, frames, squeezed)


def _checked_again(frames: Frames, device: torch.device | None, dtype: torch.dtype | None,
                   spatial_factor: int | None, channels: int | None) -> Frames:
    """``frames`` that :func:`to_frames` made (not regrouped as videos), for another VAE call: their values are
    not read again (a bright 8-bit image, once in [-1, 1], would read as a [0, 1] image), only their place and
    size."""
    pixels = frames.pixels
    _check_device(pixels.device, device)
    _check_size(pixels, pixels, spatial_factor, channels)
    return replace(frames, pixels=pixels.to(dtype=dtype or pixels.dtype).contiguous())


def _check_device(where: torch.device, device: torch.device | None) -> None:
    if device is not None and where != device:
        raise ValueError(f"images are on {where} but the VAE is on {device}; move one of them "
                         f"(e.g. images.to('{device}'))")


def _check_size(images, pixels: torch.Tensor, spatial_factor: int | None, channels: int | None) -> None:
    """The frames' channels are the VAE's, and their size a multiple of its downsampling factor."""
    c, h, w = pixels.shape[-3:]
    _check_channels(images, c, channels)
    if spatial_factor is not None and min(h, w) < spatial_factor:
        raise ValueError(f"images: height {h} and width {w}: the VAE downsamples by {spatial_factor}, so images "
                         f"must be at least {spatial_factor}x{spatial_factor} pixels")
    if spatial_factor is not None and (h % spatial_factor or w % spatial_factor):
        raise ValueError(
            f"images: height {h} and width {w} must be multiples of {spatial_factor} (the VAE's "
            f"downsampling factor); crop or resize to {h // spatial_factor * spatial_factor}x"
            f"{w // spatial_factor * spatial_factor}"
        )


def as_videos(frames: Frames, frame_step: int, kind: str) -> Frames:
    """``frames`` regrouped as whole videos ``(B, 3, F, H, W)`` for a causal 3-D VAE that takes videos of
    ``1 + k * frame_step`` frames (images without a frame axis are 1-frame videos)."""
    count = frames.frames_per_video
    check_video_frames(count, frame_step, kind, "images")
    h, w = frames.pixels.shape[-2:]
    pixels = frames.pixels.view(frames.batch, count, -1, h, w).transpose(1, 2).contiguous()
    return Frames(pixels, frames.batch, frames.frames, frames.squeezed, videos=True)


def check_dense(name: str, tensor: torch.Tensor) -> None:
    """A sparse (or other non-strided) tensor is refused naming ``name`` and the fix (torch's kernels would fail
    later with an error about their backends)."""
    if tensor.layout != torch.strided:
        raise TypeError(f"{name}: a {str(tensor.layout).removeprefix('torch.')} tensor; pass a dense one "
                        f"({name}.to_dense())")


def check_latent_size(h: int, w: int, adapter, name: str) -> None:
    """A decoder that needs latents of at least ``adapter.min_latent_size`` a side (LTX-2's pads by
    reflection) is refused smaller images, naming the size it takes, before the VAE fails obscurely."""
    smallest, f = adapter.min_latent_size, adapter.spatial_factor
    if smallest > 1 and min(h, w) < smallest * f:
        raise ValueError(f"{name}: height {h} and width {w}: {adapter.kind} decodes latents of at least {smallest}x"
                         f"{smallest}, images of at least {smallest * f}x{smallest * f} pixels")


def check_latents(latents, adapter) -> None:
    """Latents ``adapter`` decodes: ``(C, h, w)``, ``(B, C, h, w)`` or ``(B, F, C, h, w)`` (a video VAE's
    ``(C, f, h, w)`` or ``(B, C, f, h, w)``) float tensors with its channels, on its device, large enough
    and finite; else an error naming ``latents``."""
    check_loaded(adapter.device)
    videos = adapter.encodes_videos
    ranks, channel_dim = ((4, 5), -4) if videos else ((3, 4, 5), -3)
    if not isinstance(latents, torch.Tensor) or latents.dim() not in ranks:
        if isinstance(latents, torch.Tensor):
            got = f"got shape {tuple(latents.shape)}"
        else:
            kind = type(latents)
            got = f"got a {kind.__module__}.{kind.__qualname__}"
            if kind.__module__ == "numpy":
                got += "; torch.from_numpy converts it"
        if videos:
            raise ValueError(f"latents must be a (C, f, h, w) or (B, C, f, h, w) tensor: {adapter.kind} decodes "
                             f"whole videos; {got}")
        raise ValueError(f"latents must be a (C, h, w), (B, C, h, w) or (B, F, C, h, w) tensor; {got}")
    check_dense("latents", latents)
    if not latents.is_floating_point():
        raise TypeError(f"latents must be a float tensor, got {latents.dtype}")
    if latents.numel() == 0:
        raise ValueError(f"latents: empty batch (shape {tuple(latents.shape)})")
    if adapter.device is not None and latents.device != adapter.device:
        raise ValueError(f"latents are on {latents.device} but the VAE is on {adapter.device}")
    channels = latents.shape[channel_dim]
    if adapter.latent_channels is not None and channels != adapter.latent_channels:
        raise ValueError(f"latents have {channels} channels (dim {channel_dim} of shape {tuple(latents.shape)}); "
                         f"this {adapter.kind} decodes {adapter.latent_channels}")
    if min(latents.shape[-2:]) < (smallest := adapter.min_latent_size):
        raise ValueError(f"latents of {latents.shape[-2]}x{latents.shape[-1]}: this {adapter.kind} decodes latents "
                         f"of at least {smallest}x{smallest}")
    check_finite("latents", latents)


def check_video_frames(count: int, frame_step: int, kind: str, name: str) -> None:
    """A video VAE that compresses time takes videos of ``1 + k * frame_step`` frames; another ``count`` is an
    error naming the argument ``name`` and how many frames to keep."""
    if frame_step == 0 and count != 1:
        raise ValueError(f"{name}: {kind} encodes still images only, as 1-frame videos (its convolutions fold the "
                         f"frame away), got {count} frames; pass images, (B, C, H, W), or invert the frames as a "
                         "batch of images")
    if frame_step and (count - 1) % frame_step:
        fits = 1 + (count - 1) // frame_step * frame_step
        raise ValueError(f"{name}: {kind} takes videos of 1 + {frame_step}k frames (1, {1 + frame_step}, "
                         f"{1 + 2 * frame_step}, ...), since it compresses time after the first frame; got {count} "
                         f"frames: keep the first {fits}")


def _stacked(images, wide: bool, channels: int | None):
    """A list of tensors, or of NumPy arrays, as one batch (each item one image or one video)."""
    if not isinstance(images, list | tuple) or not images:
        return images
    if all(isinstance(item, torch.Tensor) for item in images):
        items = images
    elif all(isinstance(item, np.ndarray) for item in images):
        if any(item.ndim not in (3, 4) for item in images):
            raise ValueError("images: a list of NumPy arrays holds (H, W, 3) images or (F, H, W, 3) videos")
        # an (H, W, 3) image comes back as a batch of one; an (F, H, W, 3) video as its F frames
        items = [_from_numpy(item, wide, channels)[0][0] if item.ndim == 3 else _from_numpy(item, wide, channels)[0]
                 for item in images]
    else:
        return images
    shapes = {tuple(item.shape) for item in items}
    if len(shapes) != 1:
        raise ValueError(f"images: the list's items must have one shape to stack as a batch, got {sorted(shapes)}")
    devices, dtypes = {item.device for item in items}, {item.dtype for item in items}
    if len(devices) != 1:
        raise ValueError(f"images: the list's tensors are on several devices: {sorted(map(str, devices))}")
    if len(dtypes) != 1:  # uint8 [0, 255] and float [-1, 1] items would be stacked on different scales
        raise ValueError(f"images: the list's tensors have several dtypes: {sorted(map(str, dtypes))}")
    if items[0].dim() not in (3, 4):
        raise ValueError(f"images: a list of tensors holds (3, H, W) images or (F, 3, H, W) videos, got {shapes.pop()}")
    return torch.stack(list(items))


def _is_pil_image(item) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def _is_pil(images) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a hard dependency
        return False
    if isinstance(images, Image.Image):
        return True
    return isinstance(images, list | tuple) and len(images) > 0 and all(isinstance(i, Image.Image) for i in images)
