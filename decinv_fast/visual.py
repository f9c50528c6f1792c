"""Pictures of a result: an image panel (PIL only) and a convergence plot (matplotlib, optional)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .options import check_finite


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> ``uint8`` in [0, 255] (same shape and device), rounded as an 8-bit image
    file stores them. NaN/inf pixels are an error: a cast would turn them into arbitrary bytes; so are
    integer pixels (already 8-bit ones would be read as values in [-1, 1] and saturate)."""
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        got = pixels.dtype if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise TypeError(f"pixels must be a float tensor in [-1, 1], got {got}")
    check_finite("pixels", pixels)
    return ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round pixels in [-1, 1] to the 256 levels of an 8-bit image, keeping dtype and device."""
    return to_uint8(pixels).float().div(127.5).sub(1).to(pixels.dtype)


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), over the whole tensor."""
    mse = (estimate.float().clamp(-1, 1) - truth.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def panel(columns: dict[str, torch.Tensor], scale: int = 1) -> Image.Image:
    """Side-by-side ``(3, H, W)`` images in [-1, 1], each titled; errors can be passed pre-scaled.

    Images are enlarged ``scale`` times (nearest neighbour), or more where a title would not fit
    over its column otherwise (a 32x32 input): by the smallest whole factor that fits the widest."""
    tiles = [Image.fromarray(to_uint8(img.cpu()).permute(1, 2, 0).numpy()) for img in columns.values()]
    w, h = tiles[0].size
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max(draw.textlength(name) for name in columns) + 6  # 3 pixels of margin each side
    scale = max(scale, math.ceil(widest / w))
    w, h = w * scale, h * scale
    title = 14
    out = Image.new("RGB", (w * len(tiles), h + title), "white")
    draw = ImageDraw.Draw(out)
    for i, (name, tile) in enumerate(zip(columns, tiles, strict=True)):
        out.paste(tile.resize((w, h), Image.NEAREST), (i * w, title))
        draw.text((i * w + 3, 1), name, fill="black")
    return out


def over_white(pixels: torch.Tensor) -> torch.Tensor:
    """RGBA pixels ``(..., 4, H, W)`` in [-1, 1] composited over white: ``(..., 3, H, W)``, as they look."""
    alpha = (pixels[..., 3:, :, :].clamp(-1, 1) + 1) / 2
    return pixels[..., :3, :, :] * alpha + (1 - alpha)


def error_image(estimate: torch.Tensor, truth: torch.Tensor, gain: float = 10.0) -> torch.Tensor:
    """``|estimate - truth| * gain`` shown from black (0) to white, as a [-1, 1] image."""
    return ((estimate.float() - truth.float()).abs() * gain).clamp(0, 2) - 1


def convergence_plot(path: str | Path, curves: dict[str, dict[str, list[float]]]) -> Path:
    """Plot NMSE(z_k) [dB] and the relative residual against the step for several runs.

    ``curves[label] = {"nmse_db": [...], "residual": [...]}``. Needs matplotlib; draws on a
    ``Figure`` of its own, leaving pyplot and the caller's matplotlib backend alone.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for label, c in curves.items():
        steps = np.arange(1, len(c["nmse_db"]) + 1)
        ax1.plot(steps, c["nmse_db"], label=label)
        ax2.semilogy(np.arange(len(c["residual"])), c["residual"], label=label)
    ax1.set(xlabel="step", ylabel="NMSE(z) [dB]", title="latent error vs step")
    ax2.set(xlabel="step", ylabel="relative residual", title="residual vs step")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
