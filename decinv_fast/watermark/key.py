"""The tree-ring key (Wen et al., 2023, "ring" variant) and its injection into the initial noise.

Fourier convention: the orthonormal 2-D DFT of one latent channel ``x`` ``(h, w)``,

    X[k] = (h w)^{-1/2} * sum_n x[n] exp(-2 pi i (k1 n1 / h + k2 n2 / w)),

so white noise ``x ~ N(0, 1)`` has ``E|X[k]|^2 = 1`` at every frequency ``k``, and ``X[-k] = conj X[k]``.
Frequencies are the signed integers of ``torch.fft.fftfreq`` (no ``fftshift`` needed).

Key pattern. The mask is the disc ``|k| <= radius`` around the zero frequency in one channel
(``channel``); it is split into rings ``j - 1 < |k| <= j`` (``j = 1..radius``; ring 1 holds the zero
frequency), and every coefficient of ring ``j`` gets the same value ``v_j``. As in the paper, the
ring values come from a seeded Gaussian draw; here they are *real*, ``v_j ~ N(0, 1)``, so that the
key is Hermitian (``K[-k] = K[k] = conj K[k]``, the disc and its rings being symmetric). Injection
then yields an exactly real latent that carries the key unchanged, and the key has the energy of
white noise at those frequencies (``E v^2 = 1``). (The paper's ring values are complex coefficients
of a noise draw; taking the real part after the inverse FFT then keeps only ``Re v_j``, so detection
compares against a value the image never carried.)

Defaults follow the paper's setting for Stable Diffusion (64x64 latents: radius 10, the last of the
four channels): ``channel = C - 1`` and ``radius = max(1, round(10 * min(h, w) / 64))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.checks import check_state
from ..options import is_int, tensor_hint


def frequency_radius(h: int, w: int) -> torch.Tensor:
    """``(h, w)`` float64 ``|k|`` of every DFT bin, with signed integer frequencies."""
    k1 = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
    k2 = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
    return torch.sqrt(k1[:, None] ** 2 + k2[None, :] ** 2)


@dataclass(frozen=True)
class TreeRingKey:
    """A ring key for latents shaped ``(B, C, h, w)``.

    Attributes:
        shape: ``(C, h, w)``, the latent shape it was built for.
        channel: the latent channel that carries the key.
        radius: disc radius in frequency bins.
        seed: the seed of the ring values.
        mask: ``(h, w)`` bool, the keyed DFT bins (``|M|`` of them, symmetric under ``k -> -k``).
        values: ``(h, w)`` float64, the (real) key on the mask, zero elsewhere.
        ring_values: ``(radius,)`` float64, ``v_1..v_radius``.
    """

    shape: tuple[int, int, int]
    channel: int
    radius: int
    seed: int
    mask: torch.Tensor
    values: torch.Tensor
    ring_values: torch.Tensor

    @property
    def size(self) -> int:
        """``|M|``: the number of keyed DFT bins (the degrees of freedom of the detection statistic)."""
        return int(self.mask.sum())

    def check(self, latents: torch.Tensor, name: str) -> None:
        """Raise a clear error if ``latents`` (argument ``name``) do not fit this key (or are empty or non-finite)."""
        check_state(name, latents)
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.shape:
            raise ValueError(f"{name} must be (B, {', '.join(map(str, self.shape))}) for this key, "
                             f"got shape {tuple(latents.shape)}")


def check_key(key) -> TreeRingKey:
    """``key`` if it is a :class:`TreeRingKey`, else a ``TypeError`` naming it."""
    if not isinstance(key, TreeRingKey):
        raise TypeError(f"key must be a TreeRingKey (see make_ring_key), got {type(key).__name__}")
    return key


def make_ring_key(shape, *, radius: int | None = None, channel: int | None = None, seed: int = 0) -> TreeRingKey:
    """Build a ring key for latents of per-sample ``shape`` ``(C, h, w)`` (see the module docstring)."""
    sequence = isinstance(shape, (tuple, list, torch.Size))
    if not sequence or len(shape) != 3 or any(not is_int(s) or s < 1 for s in shape):
        raise ValueError(f"shape must be (C, h, w) of positive ints, got {shape!r}")
    c, h, w = (int(s) for s in shape)
    if min(h, w) < 3:
        raise ValueError(f"shape must be (C, h, w) with h, w >= 3 for a ring key (the smallest ring, radius 1, "
                         f"needs 3x3 latents), got {shape!r}")
    channel = c - 1 if channel is None else channel
    if not is_int(channel) or not 0 <= channel < c:
        raise ValueError(f"channel must be an int in [0, {c - 1}], got {channel!r}{tensor_hint(channel)}")
    radius = max(1, round(10 * min(h, w) / 64)) if radius is None else radius
    if not is_int(radius) or not 1 <= radius < min(h, w) / 2:
        raise ValueError(f"radius must be an int in [1, {(min(h, w) - 1) // 2}] for {h}x{w} latents, "
                         f"got {radius!r}{tensor_hint(radius)}")
    if not is_int(seed) or not -2**63 <= seed < 2**64:
        raise ValueError("seed must be an int in [-2**63, 2**64 - 1] (a torch.Generator seed), "
                         f"got {seed!r}{tensor_hint(seed)}")
    channel, radius, seed = int(channel), int(radius), int(seed)
    dist = frequency_radius(h, w)
    mask = dist <= radius
    ring = torch.ceil(dist).clamp(min=1).long()  # ring j holds j-1 < |k| <= j; the zero frequency is in ring 1
    gen = torch.Generator().manual_seed(seed)
    ring_values = torch.randn(radius, generator=gen, dtype=torch.float64)
    values = torch.where(mask, ring_values[(ring - 1).clamp(max=radius - 1)], torch.zeros((), dtype=torch.float64))
    return TreeRingKey((c, h, w), channel, radius, seed, mask, values, ring_values)


def fourier(latents: torch.Tensor, channel: int) -> torch.Tensor:
    """``(B, h, w)`` complex128 orthonormal DFT of one channel of ``(B, C, h, w)`` latents."""
    return torch.fft.fft2(latents[:, channel].to(torch.float64), norm="ortho")


def inject(noise: torch.Tensor, key: TreeRingKey) -> torch.Tensor:
    """``noise`` ``(B, C, h, w)`` with its keyed DFT bins replaced by the key (same dtype and device).

    Only ``key.channel`` changes; in float64 its masked coefficients equal the key to rounding and
    the others are unchanged.
    """
    check_key(key).check(noise, "noise")
    spectrum = fourier(noise, key.channel)
    keyed = torch.where(key.mask.to(noise.device), key.values.to(noise.device, torch.complex128), spectrum)
    out = noise.clone()
    out[:, key.channel] = torch.fft.ifft2(keyed, norm="ortho").real.to(noise.dtype)
    return out
