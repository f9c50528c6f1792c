"""The paper's evaluation protocol: a latent with a known answer and its 8-bit image.

``z*`` is drawn from the encoder's latent distribution of a real image (scaled like a pipeline),
``x = D(z*)`` is rounded to 8 bits as a saved image would be, and an inversion of ``x`` is scored
by ``NMSE(z_hat, z*)``. The encoder-only baseline is ``E(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import as_adapter
from .api import decode
from .inputs import Frames, as_videos
from .visual import quantize


@dataclass
class Target:
    latents: torch.Tensor  # z*, the answer
    images: torch.Tensor  # x = quantize(D(z*)), what is inverted


@torch.no_grad()
def make_target(vae, images: torch.Tensor, *, seed: int = 0) -> Target:
    """``z*`` sampled from ``vae``'s latent distribution of ``images`` (frames ``(N, 3, H, W)``
    or videos ``(B, F, 3, H, W)``), and ``x = quantize(D(z*))``. A video VAE (Wan, CogVideoX, ...)
    samples ``z*`` of whole videos, ``(B, C, f, h, w)``; its images are videos (frames: 1-frame videos)."""
    adapter = as_adapter(vae)
    dist_of = getattr(adapter.module, "encode", None)
    if dist_of is None:
        raise TypeError("make_target needs a diffusers VAE with a latent distribution")
    video = images.dim() == 5
    if adapter.encodes_videos:  # rows are whole videos (B, 3, F, H, W)
        flat = images.flatten(0, 1) if video else images
        layout = Frames(flat, images.shape[0], images.shape[1] if video else None, False)
        rows = as_videos(layout, adapter.frame_step, adapter.kind).pixels
    else:
        rows = images.flatten(0, 1) if video else images
    rows = rows.to(adapter.device, adapter.dtype)
    gen = torch.Generator(device=rows.device).manual_seed(seed)
    output = dist_of(rows)
    if not hasattr(output, "latent_dist"):  # AutoencoderTiny's encoder returns latents, no distribution
        raise TypeError(f"make_target needs a diffusers VAE with a latent distribution; {adapter.kind} has none")
    dist = output.latent_dist
    noise = torch.randn(dist.mean.shape, generator=gen, device=rows.device, dtype=dist.mean.dtype)
    raw = dist.mean + dist.std * noise
    z_star = adapter.space.to_latent(raw)
    if video and not adapter.encodes_videos:
        z_star = z_star.reshape(images.shape[:2] + z_star.shape[1:])
    # contiguous: decoders can hand back channels-last pixels, which convolve to different bits
    return Target(z_star, quantize(decode(vae, z_star)).contiguous())
