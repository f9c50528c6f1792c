"""Beyond the paper: Anderson acceleration and automatic step sizes for the fixed-point iteration.

These run their update with plain torch ops (per-sample step sizes and least-squares mixing do not
fit the fused kernels' per-step table), in fp32 (fp64 for fp64 latents); the decoder and
encoder passes are shared with the fused path (``GradientFreeIteration.evaluate``).

Automatic step size (``lr="auto"``, for ``fsm``, ``km`` and ``anderson``): the first step uses
``rho = 1`` (times the schedule); after it, each sample gets the secant (Barzilai-Borwein) step
``rho = <s, t> / <t, t>`` with ``s = y_1 - y_0`` and ``t = T(y_1) - T(y_0)``, the step that best
undoes the change of the residual along the first move; clipped to ``[RHO_MIN, RHO_MAX]``, and
left at 1 when ``<s, t> <= 0`` (no usable curvature).

Gain on the mean (option ``mean_gain``, for ``fsm``, ``km`` and ``anderson``): the step is taken
along ``P T(y)``, where ``P`` multiplies the per-frame, per-channel spatial mean of ``T(y)`` by
``mean_gain`` and leaves the rest as it is. ``P`` is invertible, so the fixed point is the same; only
the speed along the latents' per-channel offsets changes. Measured on the fixture VAE (64x64 crops,
``benchmarks/stopping.py``): those offsets hold half of the encoder-only error and most of what the
iteration still gains after 10 evaluations, so speeding them up is where the evaluations pay most.
The reported residual stays ``||T(y)||``. Option ``mean_gain_clipped`` sets another gain for images with at
least ``clipping.CLIPPED_SHARE`` of their values at +-1 (``auto`` keeps 1 there).
"""

from __future__ import annotations

import torch

from .anderson import AndersonMixer, FrameLayout
from .clipping import CLIPPED_SHARE, clipped_share
from .loop import GradientFreeIteration
from .options import math_dtype, mean_gains, option

RHO_MIN, RHO_MAX = 0.05, 4.0


def gain_on_mean(t: torch.Tensor, gain: float | torch.Tensor) -> torch.Tensor:
    """``t`` (``(N, C, ...)`` frames) with its per-frame, per-channel spatial mean times ``gain`` (a number, or
    ``(N,)`` one per frame); a video VAE's ``(N, C, f, h, w)`` latents per latent frame."""
    spatial = tuple(range(3 if t.dim() == 5 else 2, t.dim()))
    if isinstance(gain, torch.Tensor):
        gain = gain.view(-1, *[1] * (t.dim() - 1))
    return t + (gain - 1) * t.mean(dim=spatial, keepdim=True)


def secant_rho(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample ``<s, t> / <t, t>`` (``(B, n)`` inputs), clipped; 1 where it is not usable."""
    st = (s * t).sum(1)
    tt = (t * t).sum(1)
    rho = st / tt.clamp_min(1e-30)
    usable = (st > 0) & torch.isfinite(rho)
    return torch.where(usable, rho.clamp(RHO_MIN, RHO_MAX), torch.ones_like(rho))


def frame_layout(adapter, batch: int, latents: torch.Tensor, pixels: torch.Tensor) -> FrameLayout:
    """The latent frames of each of ``batch`` samples, for Anderson's weights per frame: a video VAE's
    ``(B, C, f, h, w)`` latents decode latent frame 0 to pixel frame 0 and frame ``t`` to the
    ``temporal_compression`` frames up to ``t * temporal_compression`` (its ``(B, c, F, H, W)`` pixels);
    a frame-by-frame VAE's frame-major latents, ``F`` frames a sample, decode each frame to its own."""
    if adapter.encodes_videos:
        _, channels, frames, h, w = latents.shape
        k = adapter.temporal_compression
        owners = tuple(min((j + k - 1) // k, frames - 1) for j in range(pixels.shape[2]))
        return FrameLayout((channels, frames, h * w), (pixels.shape[1], pixels.shape[2], pixels[0, 0, 0].numel()),
                           owners)
    frames = latents.shape[0] // batch
    return FrameLayout((1, frames, latents[0].numel()), (1, frames, pixels[0].numel()), tuple(range(frames)))


class AcceleratedIteration(GradientFreeIteration):
    """``anderson`` (option ``memory``) and ``fsm``/``km`` with ``lr="auto"`` or ``mean_gain``: torch updates."""

    # The update runs in fp32 (fp64 for fp64 latents); with half-precision latents and ``fp32_master``
    # (default on for fp16) it reads and writes a fp32 master copy of the evaluation point ``y``, as the
    # fused updates do, so steps smaller than the latents' rounding are not lost. Anderson's history
    # is fp32 (or fp64) anyway.
    uses_master = True

    def __init__(self, adapter, frames, plan):
        super().__init__(adapter, frames, plan)
        batch = frames.batch
        self.k = 0
        self.math = math_dtype(self.z.dtype)
        self.auto = bool(plan.options.get("auto_rho", False))
        self.scale = torch.ones(batch, device=self.z.device)  # per-sample factor on the table's rho
        self.first = None  # (y_0, T(y_0)) for the secant step size
        self.gain = self._gain(*mean_gains(plan.options))
        if self.gain is not None and self.e_x.dim() < 3:
            raise ValueError(f"mean_gain needs latents shaped (N, C, H, W) with spatial dims; this encoder "
                             f"returns shape {tuple(self.e_x.shape)}")
        if plan.method == "anderson":
            self.y = self.z  # Anderson keeps one point: the one it evaluates and returns
            pixels = None if self.residual is None else self.residual.numel() // batch
            layout = frame_layout(adapter, batch, self.e_x, self.x) if option(plan.options, "frame_weights") else None
            self.mixer = AndersonMixer(self.per_sample(self.y), option(plan.options, "memory"), pixels=pixels,
                                       safeguard=option(plan.options, "safeguard"), steps=plan.steps, frames=layout)
        else:
            self.mixer = None

    def _gain(self, gain: float, clipped: float) -> float | torch.Tensor | None:
        """The mean gain: ``None`` for none (1), a number for every sample, or ``(N,)`` per latent frame where
        images with at least ``CLIPPED_SHARE`` of their values at +-1 take ``clipped``."""
        if gain == clipped:
            return None if gain == 1.0 else gain
        batch = self.frames.batch
        per_sample = torch.where(clipped_share(self.per_sample(self.x)) >= CLIPPED_SHARE, clipped, gain)
        return per_sample.to(self.math).repeat_interleave(self.e_x.shape[0] // batch)

    def _set_point(self, y: torch.Tensor) -> None:
        """The next evaluation point ``y`` (``(B, n)`` in the update's dtype): into the master copy, if any, and into
        ``self.y`` when it is its own buffer (KM; for fsm and anderson ``y`` is ``z``, set by the caller)."""
        if self.master is not None:
            self.per_sample(self.master).copy_(y)
        if self.y is not self.z:
            self.per_sample(self.y).copy_(y)

    def keeps_pixel_residual(self, plan) -> bool:
        return plan.method == "anderson" and option(plan.options, "mixing") == "pixel"

    def join_first_frame(self, start: torch.Tensor) -> None:
        """As for every method; Anderson's history, whose differences the new first latent frame breaks, restarts."""
        super().join_first_frame(start)
        if self.mixer is not None:
            self.mixer.restart()

    def update(self) -> None:
        p = self.per_sample
        t = self.edz.to(self.math) - self.e_x.to(self.math)
        g = p(t)
        self.sq_norm.copy_(g.square().sum(1))
        if self.gain is not None:
            g = p(gain_on_mean(t, self.gain))
        y = p(self.y).to(self.math) if self.master is None else p(self.master)
        if self.auto and self.k == 0:
            self.first = (y.clone(), g.clone())
        elif self.auto and self.k == 1:
            scale = secant_rho(y - self.first[0], g - self.first[1])
            if self.tracker is not None:  # a sample that stopped after one step took none: 1, as run alone
                stop = self.tracker.stop_step
                scale = torch.where((stop < 0) | (stop > 1), scale, self.scale)
            self.scale = scale
            self.first = None
        rho = self.table[self.k, 0] * self.scale  # (B,)
        if self.mixer is not None:
            pixel = self.pixel_history[self.k]
            residual = None if self.residual is None else self.residual.view(self.frames.batch, -1)
            nxt = self.mixer.step(y, -rho[:, None] * g, pixel, residual)
            self._set_point(nxt)
            p(self.z).copy_(nxt)
        else:
            z_new = y - rho[:, None] * g
            if self.plan.method == "km":
                alpha = option(self.plan.options, "alpha")
                self._set_point(z_new + alpha * (z_new - p(self.z).to(self.math)))
            else:
                self._set_point(z_new)
            p(self.z).copy_(z_new)
        self.history.index_copy_(0, self.step, self.sq_norm.view(1, -1))
        self.step.add_(1)
        self.k += 1
