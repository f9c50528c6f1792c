"""Image -> ``z_0`` -> ``z_T``: decoder inversion, then diffusion inversion, with per-stage errors.

Stage 1 (decoder): ``z_0`` with ``D(z_0) ~ x``, by :func:`decinv_fast.invert` (gradient-free Adam
by default, or ``"fsm"``/``"km"``, or the gradient-based baseline ``"grad"``) or by the encoder
alone (``"encoder"``: ``z_0 = E(x)``, the usual shortcut, poor because ``E(D(z)) != z``).

Stage 2 (diffusion): ``z_T`` from ``z_0`` by BDIA inversion from ``z_0`` (first step a DDIM
inversion step, exact after it) or by plain DDIM inversion. Both are approximate from ``z_0`` alone
(see :mod:`.samplers`); the decoder stage's error adds to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ..adapters import as_adapter
from ..api import decode, encode, invert
from ..inputs import Frames, to_frames
from ..loop import sample_norm
from ..metrics import nmse_db
from ..options import METHODS, check_dtype, check_finite
from ..result import InversionResult
from .checks import BDIA_GAMMA, check_cond
from .denoiser import as_denoiser
from .samplers import bdia_invert_from_z0, check_gamma, ddim_invert
from .schedule import as_schedule

DECODER_METHODS = ("encoder", *METHODS)  # "encoder": E(x) alone; the rest: decinv_fast.invert's methods
DIFFUSION_METHODS = ("bdia", "ddim")


@dataclass(repr=False)
class NoiseInversion:
    """What :func:`invert_to_noise` found and how well each stage did.

    Attributes:
        z0: ``(B, C, h, w)`` decoder-inverted latent (pipeline latent space, scaled and shifted).
        zT: ``(B, C, h, w)`` estimated initial noise, in the eps model's dtype.
        method: decoder stage (``"encoder"`` or a :func:`decinv_fast.invert` method).
        diffusion: diffusion stage (``"bdia"`` or ``"ddim"``); ``gamma`` for BDIA, else ``None``.
        decoder: ``invert``'s full result (``None`` for ``"encoder"``).
        decoder_residual: ``invert``'s last recorded relative residual ``||E(D(z)) - E(x)|| / ||E(x)||``
            (for ``"grad"``: ``||D(z) - x|| / ||x||``) at the point its last update started from, one
            step before ``z0`` (``"auto"`` may return an earlier point still); ``None`` for ``"encoder"``.
        pixel_residual: ``||D(z0) - x|| / ||x||`` of ``z0`` itself, for every method (one extra decoder pass);
            ``||D(z0) - x||`` for an all mid-grey batch (``x = 0``).
        z0_nmse_db, zT_nmse_db: ``NMSE`` in dB against ``true_z0`` / ``true_zT`` when given.
        decoder_seconds, diffusion_seconds: wall time of each stage.
        model_calls: eps-model evaluations of the diffusion stage.
    """

    z0: torch.Tensor
    zT: torch.Tensor
    method: str
    diffusion: str
    gamma: float | None
    decoder: InversionResult | None
    decoder_residual: float | None
    pixel_residual: float
    z0_nmse_db: float | None
    zT_nmse_db: float | None
    decoder_seconds: float
    diffusion_seconds: float
    model_calls: int

    def summary(self) -> dict:
        """The scalar diagnostics as a plain dict (for logs and JSON)."""
        keys = ("method", "diffusion", "gamma", "decoder_residual", "pixel_residual", "z0_nmse_db",
                "zT_nmse_db", "decoder_seconds", "diffusion_seconds", "model_calls")
        return {k: getattr(self, k) for k in keys}

    def __repr__(self) -> str:
        """One line: the shapes and :meth:`summary` (the default would print every tensor)."""
        facts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in self.summary().items())
        return f"NoiseInversion(z0/zT {tuple(self.z0.shape)}, {facts})"


def _check_truth(name: str, truth, latent: tuple) -> None:
    """A known answer: a finite, not all-zero float tensor of the latents' shape ``latent`` (a ``None``
    entry: any size; a pair's latent channels and size are known only once it has encoded)."""
    if truth is None:
        return
    if not isinstance(truth, torch.Tensor) or not truth.is_floating_point() or truth.dim() != 4 or any(
            want is not None and got != want for got, want in zip(truth.shape, latent, strict=True)):
        got = f"{tuple(truth.shape)} {truth.dtype}" if isinstance(truth, torch.Tensor) else type(truth).__name__
        want = ", ".join("?" if n is None else str(n) for n in latent)
        raise ValueError(f"{name} must be a float tensor of the latents' shape ({want}), got {got}")
    check_finite(name, truth)
    if not bool(truth.ne(0).any()):
        raise ValueError(f"{name} is all zeros: its NMSE is normalised by ||{name}||² and undefined")


def image_frames(adapter, images, dtype: torch.dtype | None) -> Frames:
    """``images`` read once, as :func:`decinv_fast.invert` reads them for ``adapter`` in ``dtype`` (its
    ``dtype`` option), still images only, always a batch (one image is a batch of one); the stages take
    these frames on as they are."""
    check_dtype(dtype)
    frames = to_frames(images, device=adapter.device, dtype=dtype or adapter.dtype,
                       spatial_factor=adapter.spatial_factor, channels=None)
    if frames.frames is not None:
        raise ValueError(f"images: videos are not supported here, got {frames.batch} video(s) of {frames.frames} "
                         "frames; pass images (B, 3, H, W)")
    return replace(frames, squeezed=False)


def invert_to_noise(vae, eps_model, scheduler, images, *, method: str = "adam", diffusion: str = "bdia",
                    gamma: float | None = None, num_inference_steps: int | None = None, cond: dict | None = None,
                    true_z0: torch.Tensor | None = None, true_zT: torch.Tensor | None = None,
                    **invert_options) -> NoiseInversion:
    """Recover the initial noise ``z_T`` of generated ``images``: decoder inversion, then diffusion inversion.

    Args:
        vae: the pipeline's VAE (anything :func:`decinv_fast.invert` accepts).
        eps_model: epsilon-prediction model (diffusers UNet, callable ``eps(z, t, **cond)`` or
            :class:`~.denoiser.Denoiser`).
        scheduler: a :class:`~.schedule.Schedule` or a diffusers scheduler (its timesteps, or
            ``num_inference_steps`` of its DDIM spacing).
        images: ``(B, 3, H, W)`` in [-1, 1], uint8 tensors, PIL images or uint8 arrays (no videos).
        method: decoder stage, one of ``"encoder"``, ``"adam"`` (gradient-free, default), ``"fsm"``,
            ``"km"``, ``"anderson"``, ``"auto"`` (self-stopping) or ``"grad"`` (gradient-based baseline).
        diffusion: ``"bdia"`` (use the ``gamma`` of generation) or ``"ddim"``.
        gamma: BDIA's gamma, in (0, 1], the one used at generation (``diffusion="ddim"`` takes none:
            given there, it is refused rather than ignored). The default (``None``) 0.96 sits in the
            range where the from-``z_0`` inversion is most accurate: ``gamma = 1`` leaves BDIA's
            oscillating mode undamped, while the inverse divides errors by ``gamma`` at every step
            (with 50 steps, 0.9 already diverges; see docs/diffusion_inversion.md).
        cond: conditioning for the eps model (``guidance_scale``, ``encoder_hidden_states``,
            ``negative_encoder_hidden_states``, ...), as at generation.
        true_z0, true_zT: the known answers, if any, to score each stage (NMSE in dB).
        **invert_options: passed to :func:`decinv_fast.invert` (``steps``, ``lr``, ``schedule``,
            ``dtype``, ``tol``, ``backend``, ...); only ``dtype`` applies to ``"encoder"``.
    """
    if method not in DECODER_METHODS:
        raise ValueError(f"method must be one of {DECODER_METHODS}, got {method!r}")
    if diffusion not in DIFFUSION_METHODS:
        raise ValueError(f"diffusion must be one of {DIFFUSION_METHODS}, got {diffusion!r}")
    if diffusion == "ddim" and gamma is not None:
        raise ValueError(f"gamma is BDIA's; diffusion='ddim' takes none, got gamma={gamma!r}")
    gamma = check_gamma(BDIA_GAMMA if gamma is None else gamma, inverse=True) if diffusion == "bdia" else None
    grid = as_schedule(scheduler, num_inference_steps)
    denoiser = as_denoiser(eps_model, **check_cond(cond))
    adapter = as_adapter(vae)
    dtype = invert_options.get("dtype")
    frames = image_frames(adapter, images, dtype)
    pixels = frames.pixels
    f = adapter.spatial_factor
    latent = (pixels.shape[0], adapter.latent_channels, *((None, None) if f is None else
                                                          (pixels.shape[-2] // f, pixels.shape[-1] // f)))
    _check_truth("true_z0", true_z0, latent)  # before the stages run: their errors would otherwise come last
    _check_truth("true_zT", true_zT, latent)

    start = time.perf_counter()
    if method == "encoder":
        unused = set(invert_options) - {"dtype"}
        if unused:
            raise TypeError(f"option(s) {sorted(unused)} do not apply to method='encoder'")
        decoder, decoder_residual = None, None
        z0 = encode(vae, frames, dtype=dtype)
    else:
        decoder = invert(vae, frames, method=method, **invert_options)
        z0, decoder_residual = decoder.latents, float(decoder.residuals[-1])
    recon = decode(vae, z0).float()
    # over the whole batch; 1 for a uniform mid-grey batch (all 0): the residual is absolute, not infinite
    pixel_residual = float((recon - pixels.float()).norm() / sample_norm(pixels, 1)[0])
    decoder_seconds = time.perf_counter() - start

    weight = denoiser.parameter
    z0_model = z0.to(weight.device, weight.dtype) if weight is not None else z0
    calls_before = denoiser.calls  # a Denoiser passed in counts for its whole life: report this inversion's calls
    start = time.perf_counter()
    if diffusion == "bdia":
        zT = bdia_invert_from_z0(denoiser, grid, z0_model, gamma=gamma)
    else:
        zT = ddim_invert(denoiser, grid, z0_model)
    diffusion_seconds = time.perf_counter() - start

    for name, truth, estimate in (("true_z0", true_z0, z0), ("true_zT", true_zT, zT)):  # a pair's latents
        _check_truth(name, truth, tuple(estimate.shape))
    return NoiseInversion(
        z0=z0, zT=zT, method=method, diffusion=diffusion, gamma=gamma, decoder=decoder,
        decoder_residual=decoder_residual, pixel_residual=pixel_residual,
        z0_nmse_db=None if true_z0 is None else nmse_db(z0.double(), true_z0.to(z0.device, torch.float64)),
        zT_nmse_db=None if true_zT is None else nmse_db(zT.double(), true_zT.to(zT.device, torch.float64)),
        decoder_seconds=decoder_seconds, diffusion_seconds=diffusion_seconds, model_calls=denoiser.calls - calls_before,
    )

