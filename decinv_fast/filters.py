"""Pixel-space low-pass of the residual the encoder sees (option ``residual_blur``).

The gradient-free iteration solves ``E(D(z)) = E(x)``. With an 8-bit image ``x = D(z*) + q`` the
white quantization noise ``q`` moves that solution away from ``z*`` by about ``(K J)^-1 K q``
(``K``, ``J`` the encoder's and decoder's Jacobians): the encoder responds to pixel noise the decoder
never made, which is one reason the iteration is semi-convergent. Encoding
``x + blur(D(z) - x)`` instead of ``D(z)`` (the same cost per evaluation: one decoder and one
encoder pass) solves ``E(x + blur(D(z) - x)) = E(x)``, whose solution the high frequencies of
``q`` move much less. The pixel error that stopping rules watch stays the unfiltered one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` pixels, radius ``ceil(3 sigma)``."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, each channel on its own, edges reflected
    (replicated, on both axes, when the image's smaller side is not larger than the kernel's radius);
    ``(N, C, F, H, W)`` videos frame by frame."""
    return _separable(images, gaussian_kernel(sigma, images.dtype, images.device))


def _separable(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``images`` convolved with the 1-D ``kernel`` along W, then along H; videos ``(N, C, F, H, W)``
    frame by frame."""
    if images.dim() == 5:
        return _separable(images.flatten(1, 2), kernel).view_as(images)
    radius = kernel.numel() // 2
    channels = images.shape[1]
    mode = "reflect" if min(images.shape[-2:]) > radius else "replicate"
    out = F.pad(images, (radius, radius, 0, 0), mode=mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode=mode)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


class ResidualBlur:
    """``gaussian_blur`` with its taps made once per device and dtype, on the first (eager) call:
    nothing is copied from the host inside a captured CUDA graph."""

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.kernels: dict[tuple, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        key = (images.device, images.dtype)
        if key not in self.kernels:
            self.kernels[key] = gaussian_kernel(self.sigma, images.dtype, images.device)
        return _separable(images, self.kernels[key])
