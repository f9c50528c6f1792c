"""Generate tree-ring watermarked 8-bit images and detect the key by full inversion.

    key = make_ring_key((4, 64, 64))
    out = generate(vae, unet, grid, noise, key=key, gamma=0.96, cond=dict(encoder_hidden_states=text))
    save_images(out.images, "out/")                                         # 8-bit PNGs
    det = detect(vae, unet, grid, key, out.images, gamma=0.96,              # image -> z0 -> zT
                 cond=dict(encoder_hidden_states=empty_text))
    det.p_value, det.score

Generation: keyed noise ``z_T`` -> BDIA-DDIM sampling -> ``D(z_0)`` -> rounded to 8 bits. Detection:
decoder inversion (:func:`decinv_fast.invert`, gradient-free by default) -> BDIA inversion from
``z_0`` -> masked Fourier coefficients of ``z_T`` against the key (:mod:`.stats`). As in the paper, the
detector does not know the prompt: pass the unconditional embedding (and guidance 1) at detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters import as_adapter
from ..api import decode
from ..diffusion.checks import BDIA_GAMMA, check_cond
from ..diffusion.denoiser import as_denoiser
from ..diffusion.pipeline import NoiseInversion, image_frames, invert_to_noise
from ..diffusion.samplers import bdia_sample
from ..diffusion.schedule import as_schedule
from ..options import is_real, tensor_hint
from ..visual import to_uint8
from .key import TreeRingKey, check_key, inject
from .stats import noise_statistic


@dataclass
class Generated:
    """What :func:`generate` made: ``images`` ``(B, 3, H, W)`` uint8 (as saved), the initial noise
    ``zT`` actually used (keyed or not), and the last BDIA pair ``(z0, z1)``."""

    images: torch.Tensor
    zT: torch.Tensor
    z0: torch.Tensor
    z1: torch.Tensor


@dataclass(repr=False)
class Detection:
    """Per-image detection results (``(B,)`` float64 CPU tensors) and the inversion behind them.

    ``score``: standardised statistic, higher = watermarked (use it for ROC curves);
    ``p_value``/``log10_p``: lower-tail p-value of the null "no key" (small = watermarked; the noncentral
    chi-square law given ``noise_std``, the noncentral F law when the scale is estimated, see :mod:`.stats`);
    ``distance``: the statistic ``S``; ``sigma``: the noise scale used; ``l1``: mean ``|Y - K|``.
    """

    score: torch.Tensor
    p_value: torch.Tensor
    log10_p: torch.Tensor
    distance: torch.Tensor
    sigma: torch.Tensor
    l1: torch.Tensor
    zT: torch.Tensor
    inversion: NoiseInversion | None

    def flagged(self, alpha: float = 0.01) -> torch.Tensor:
        """``(B,)`` bool: watermark detected at significance ``alpha`` (``p < alpha``), a level in (0, 1)."""
        if not (is_real(alpha) and 0 < alpha < 1):
            raise ValueError(f"alpha must lie in (0, 1) (a significance level), got {alpha!r}{tensor_hint(alpha)}")
        return self.p_value < alpha

    def __repr__(self) -> str:
        """One line: how many images, how many flagged at 1 %, the score range."""
        return (f"Detection({self.score.numel()} images, {int(self.flagged().sum())} flagged at p < 0.01, "
                f"score {float(self.score.min()):.3g} .. {float(self.score.max()):.3g})")


@torch.no_grad()
def generate(vae, eps_model, scheduler, noise: torch.Tensor, *, key: TreeRingKey | None = None,
             gamma: float = BDIA_GAMMA, num_inference_steps: int | None = None, cond: dict | None = None) -> Generated:
    """BDIA-DDIM generation from ``noise`` ``(B, C, h, w)``, keyed first if ``key`` is given, then
    decoded by ``vae`` and rounded to 8 bits. ``cond``: the eps model's keyword arguments, or ``None``."""
    if key is not None:
        check_key(key)
    denoiser = as_denoiser(eps_model, **check_cond(cond))
    denoiser.check(noise, "noise")  # before keying and sampling, so that errors name this argument, not z_T
    if key is not None:
        noise = inject(noise, key)
    grid = as_schedule(scheduler, num_inference_steps)
    z0, z1 = bdia_sample(denoiser, grid, noise, gamma=gamma)
    return Generated(to_uint8(decode(vae, z0)), noise, z0, z1)


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "image") -> list[Path]:
    """Write ``(B, 3, H, W)`` uint8 images as lossless PNGs ``<prefix>_<i>.png``; returns the paths."""
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) uint8 tensor (see to_uint8; channels first), got {got}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(array) for array in images.permute(0, 2, 3, 1).cpu().numpy()]
    paths = [folder / f"{prefix}_{i}.png" for i in range(len(pictures))]
    for picture, path in zip(pictures, paths, strict=True):
        picture.save(path)
    return paths


def score_noise(noise: torch.Tensor, key: TreeRingKey, *, noise_std: float | None = None,
                inversion: NoiseInversion | None = None) -> Detection:
    """Detection statistics of an already recovered noise ``(B, C, h, w)``."""
    stats = noise_statistic(noise, key, noise_std=noise_std)
    return Detection(score=stats["score"], p_value=stats["p_value"], log10_p=stats["log10_p"],
                     distance=stats["distance"], sigma=stats["sigma"], l1=stats["l1"], zT=noise, inversion=inversion)


def detect(vae, eps_model, scheduler, key: TreeRingKey, images, *, gamma: float | None = None, method: str = "adam",
           diffusion: str = "bdia", num_inference_steps: int | None = None, cond: dict | None = None,
           noise_std: float | None = None, **invert_options) -> Detection:
    """Invert ``images`` to their initial noise (:func:`decinv_fast.invert_to_noise`) and test for ``key``.

    ``method`` picks the decoder inversion (``"encoder"`` or a :func:`decinv_fast.invert` method);
    ``gamma`` is BDIA's, as at generation (default 0.96; none with ``diffusion="ddim"``), as for
    :func:`decinv_fast.invert_to_noise`; ``invert_options`` go to :func:`decinv_fast.invert` (``steps``, ``lr``, ...).
    """
    check_key(key)
    adapter = as_adapter(vae)
    frames = image_frames(adapter, images, invert_options.get("dtype"))  # read once: invert_to_noise takes them on
    factor, channels = adapter.spatial_factor, adapter.latent_channels
    if factor is not None and channels is not None:  # known before encoding (not for an (encode, decode) pair)
        h, w = frames.pixels.shape[-2:]
        _check_fits(key, (channels, h // factor, w // factor), f"{h}x{w}-pixel images have")
    inversion = invert_to_noise(adapter, eps_model, scheduler, frames, method=method, diffusion=diffusion, gamma=gamma,
                                num_inference_steps=num_inference_steps, cond=cond, **invert_options)
    _check_fits(key, tuple(inversion.zT.shape[1:]), "images were inverted to")
    return score_noise(inversion.zT, key, noise_std=noise_std, inversion=inversion)


def _check_fits(key: TreeRingKey, latent: tuple[int, ...], what: str) -> None:
    """A ``ValueError`` naming ``images`` and ``key`` when the images' per-sample latent shape is not the key's."""
    if latent != key.shape:
        raise ValueError(f"images and key do not match: {what} {'x'.join(map(str, latent))} latents (C x h x w) with "
                         f"this VAE, but key was made for {'x'.join(map(str, key.shape))}: use make_ring_key("
                         f"{latent}) or images of the key's size")
