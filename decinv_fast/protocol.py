"""The paper's evaluation protocol: a latent with a known answer and its 8-bit image.

``z*`` is drawn from the encoder's latent distribution of a real image (scaled like a pipeline),
``x = D(z*)`` is rounded to 8 bits as a saved image would be, and an inversion of ``x`` is scored
by ``NMSE(z_hat, z*)``. The encoder-only baseline is ``E(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import LatentSpace, as_adapter
from .api import decode
from .visual import quantize


@dataclass
class Target:
    latents: torch.Tensor  # z*, the answer
    images: torch.Tensor  # x = quantize(D(z*)), what is inverted


@torch.no_grad()
def make_target(vae, images: torch.Tensor, *, seed: int = 0) -> Target:
    """``z*`` sampled from ``vae``'s latent distribution of ``images`` (frames ``(N, 3, H, W)``
    or videos ``(B, F, 3, H, W)``), and ``x = quantize(D(z*))``."""
    adapter = as_adapter(vae)
    dist_of = getattr(adapter.module, "encode", None)
    if dist_of is None:
        raise TypeError("make_target needs a diffusers VAE with a latent distribution")
    frames = images.flatten(0, 1) if images.dim() == 5 else images
    frames = frames.to(adapter.device, adapter.dtype)
    gen = torch.Generator(device=frames.device).manual_seed(seed)
    output = dist_of(frames)
    if not hasattr(output, "latent_dist"):  # AutoencoderTiny's encoder returns latents, no distribution
        raise TypeError(f"make_target needs a diffusers VAE with a latent distribution; {adapter.kind} has none")
    dist = output.latent_dist
    noise = torch.randn(dist.mean.shape, generator=gen, device=frames.device, dtype=dist.mean.dtype)
    raw = dist.mean + dist.std * noise
    z_star = LatentSpace.of(adapter.module.config).to_latent(raw)
    if images.dim() == 5:
        z_star = z_star.reshape(images.shape[:2] + z_star.shape[1:])
    # contiguous: decoders can hand back channels-last pixels, which convolve to different bits
    return Target(z_star, quantize(decode(vae, z_star)).contiguous())
