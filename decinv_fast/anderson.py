"""Anderson acceleration of the fixed-point map ``G(y) = y - rho * T(y)``, per sample, safeguarded.

With ``g_k = G(y_k) - y_k = -rho_k * T(y_k)`` and the last ``m`` differences
``dY_i = y_{i+1} - y_i``, ``dG_i = g_{i+1} - g_i`` (type-II Anderson mixing, full relaxation)::

    gamma   = argmin ||g_k - dG gamma||² + lam ||gamma||²     (lam = reg * trace(dG dG^T) / m)
    y_{k+1} = y_k + g_k - (dY + dG) gamma

solved per sample as a small ``m x m`` system in fp32 (fp64 for fp64 latents; batched, no Python loop
over samples).
``m = 0`` is exactly the forward step method. Safeguard: a mixed step whose point decodes to a
*larger* pixel error ``||D(y) - x||`` than the last accepted point is rejected; that sample takes the
plain step ``y_acc + g_acc`` from the accepted point instead and forgets its history. Plain steps are
always accepted (``safeguard=False``: every step is). Memory: ``2m + 2`` fp32 latents per sample
(fp64 for fp64 latents).

``mixing="pixel"`` chooses ``gamma`` by the *pixel* residual instead: with ``r_k = D(y_k) - x`` and
``dR_i = r_{i+1} - r_i``, ``gamma = argmin ||r_k - dR gamma||² + lam ||gamma||²`` (``lam`` from
``trace(dR dR^T)``), the point of the
history's affine span whose linearised decoding is closest to ``x``. The latent criterion drives the
iteration to the fixed point of ``E(D(z)) = E(x)``, which the encoder's error biases (the
iteration is semi-convergent); the pixel criterion is the objective the stopping rule watches
(compared in benchmarks/stopping.py). Memory: ``m + 2`` fp32 (fp64) pixel
buffers per sample (history, last accepted residual, current residual) on top of the latent ones.

``frames`` (a :class:`FrameLayout`; option ``frame_weights``) fits one ``gamma`` per *latent frame* of a
video instead of one per sample: frame ``t``'s weights minimise the residual restricted to that frame
(its latents, or for pixel mixing the pixel frames it decodes to) and mix only that frame's latents,
each block with its own ``lam``. A video's first latent frame (one pixel frame, in a causal video VAE)
converges at another pace than the rest, which one ``gamma`` for the whole video cannot follow.
Measured on the fixture video VAE (benchmarks/video_vaes.py). With one frame per sample it is the
per-sample mixing above, bit for bit. Memory: a transient copy of one frame's history per solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import check_int, math_dtype


@dataclass(frozen=True)
class FrameLayout:
    """Where a sample's latent frames lie in its flattened latents and pixels: the latents viewed as
    ``latent = (outer, frames, inner)`` (a video VAE's ``(C, f, h w)``; a frame-by-frame VAE's ``(1, F, C h w)``),
    the pixels as ``pixel = (outer, pixel frames, inner)``, and the latent frame each pixel frame decodes
    from (``pixel_to_latent``, non-decreasing, covering every latent frame)."""

    latent: tuple[int, int, int]
    pixel: tuple[int, int, int]
    pixel_to_latent: tuple[int, ...]

    def __post_init__(self):
        owners = self.pixel_to_latent
        if len(owners) != self.pixel[1] or sorted(set(owners)) != list(range(self.latent[1])) or \
                list(owners) != sorted(owners):
            raise ValueError(f"FrameLayout: pixel_to_latent {owners} must map the {self.pixel[1]} pixel frames, "
                             f"in order, onto all {self.latent[1]} latent frames")

    def pixel_frames(self, t: int) -> slice:
        """The pixel frames latent frame ``t`` decodes to."""
        owners = self.pixel_to_latent
        return slice(owners.index(t), len(owners) - owners[::-1].index(t))


class AndersonMixer:
    """Mixing state for a batch of samples viewed as ``(B, n)``. Histories are stored sample-major,
    ``(B, m, n)``, so the ``m x m`` systems are batched matrix products of the buffers themselves
    (no copy of the history per step; with weights per latent frame, one frame's part at a time)."""

    def __init__(self, y: torch.Tensor, memory: int, reg: float = 1e-6, pixels: int | None = None,
                 safeguard: bool = True, steps: int | None = None, frames: FrameLayout | None = None):
        """``pixels``: elements of a sample's image, to mix by the pixel residual (``None``: latent);
        ``safeguard``: reject mixed steps that raise the pixel error (off: every step is accepted);
        ``steps``: the run's, which bound the differences it can ever hold: the buffers keep
        ``min(memory, steps + 1)`` columns (the same results, to rounding: the columns never filled have no weight);
        ``frames``: fit the weights per latent frame (``None``, or one frame: per sample)."""
        check_int("memory (Anderson history m)", memory, 0)
        self.frames = frames if frames is not None and frames.latent[1] > 1 else None
        batch, n = y.shape
        device = y.device
        self.dtype = dtype = math_dtype(y.dtype)  # the mixing math: fp32, or fp64 for fp64 latents
        self.m, self.reg, self.safeguard = memory, reg, safeguard
        self.slots = slots = memory if steps is None else min(memory, steps + 1)
        self.pixel_mixing = pixels is not None
        if self.pixel_mixing:  # the residual history the mixing weights are fitted to
            self.dr = torch.zeros(batch, slots, pixels, dtype=dtype, device=device)
            self.acc_r = torch.zeros(batch, pixels, dtype=dtype, device=device)
        self.dy = torch.zeros(batch, slots, n, dtype=dtype, device=device)
        self.dg = torch.zeros(batch, slots, n, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, slots, dtype=torch.bool, device=device)
        self.slot = 0
        self.started = False  # is there an accepted point to difference against
        self.acc_y = y.to(dtype, copy=True)  # the last accepted point, its g and its pixel error
        self.acc_g = torch.zeros(batch, n, dtype=dtype, device=device)
        self.acc_error = torch.full((batch,), float("inf"), device=device)
        self.plain = torch.ones(batch, dtype=torch.bool, device=device)  # was the last step a plain one
        self.rejected = torch.zeros(batch, dtype=torch.int64, device=device)  # count, for diagnostics

    def step(self, y: torch.Tensor, g: torch.Tensor, pixel_error: torch.Tensor,
             residual: torch.Tensor | None = None) -> torch.Tensor:
        """Given the evaluated point ``y``, its ``g = -rho T(y)`` (fp32) and pixel error², return the
        next point (``(B, n)`` in the mixing dtype). ``residual``: ``D(y) - x`` as ``(B, pixels)``, for
        pixel mixing."""
        y, g = y.to(self.dtype), g.to(self.dtype)
        if self.pixel_mixing and residual is None:
            raise ValueError("pixel mixing needs the pixel residual D(y) - x")
        if self.pixel_mixing:
            residual = residual.to(self.dtype)
        reject = ~self.plain & (pixel_error > self.acc_error) & self.safeguard
        accept = ~reject
        self.rejected += reject.long()
        if self.m:  # history: the differences to the last accepted point, for samples accepting this one
            push = accept if self.started else torch.zeros_like(accept)
            keep = push[:, None]
            self.dy[:, self.slot] = torch.where(keep, y - self.acc_y, self.dy[:, self.slot])
            self.dg[:, self.slot] = torch.where(keep, g - self.acc_g, self.dg[:, self.slot])
            if self.pixel_mixing:
                self.dr[:, self.slot] = torch.where(keep, residual - self.acc_r, self.dr[:, self.slot])
            self.valid[:, self.slot] = torch.where(accept, push, self.valid[:, self.slot])
            self.valid &= accept[:, None]  # a rejection forgets the sample's history
            self.slot = (self.slot + 1) % self.slots
        mixed, used = self._mix(y, g, residual)
        nxt = torch.where(reject[:, None], self.acc_y + self.acc_g, mixed)
        # accepted points become the reference; rejected samples restart from theirs with a plain step
        self.acc_y = torch.where(accept[:, None], y, self.acc_y)
        self.acc_g = torch.where(accept[:, None], g, self.acc_g)
        self.acc_error = torch.where(accept, pixel_error, self.acc_error)
        if self.pixel_mixing:
            self.acc_r = torch.where(accept[:, None], residual, self.acc_r)
        self.started = True
        self.plain = reject | ~used
        return nxt

    def restart(self) -> None:
        """Forget the history: the next step is a plain one, accepted, and starts a new history from its point."""
        self.valid.zero_()
        self.slot = 0
        self.started = False
        self.plain.fill_(True)
        self.acc_error.fill_(float("inf"))

    def _mix(self, y: torch.Tensor, g: torch.Tensor,
             residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The Anderson point for every sample, and whether any history was used."""
        if self.m == 0:
            return y + g, torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        mask = self.valid.to(self.dtype)  # (B, m); stale slots are masked out of the system, not zeroed
        fit, target = (self.dr, residual) if self.pixel_mixing else (self.dg, g)
        if self.frames is not None:
            return y + g - self._frame_correction(fit, target, mask), mask.sum(1) > 0
        gamma = self._weights(torch.bmm(fit, fit.transpose(1, 2)), torch.bmm(fit, target[:, :, None])[..., 0], mask)
        correction = torch.bmm(gamma[:, None, :], self.dy + self.dg)[:, 0]
        return y + g - correction, mask.sum(1) > 0

    def _weights(self, gram: torch.Tensor, rhs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``gamma`` from the normal equations ``gram gamma = rhs`` (``(B, m, m)``, ``(B, m)``) of the valid
        columns, regularised by ``reg * trace / m``."""
        gram = gram * (mask[:, :, None] * mask[:, None, :])
        scale = gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-30) / self.m
        eye = torch.eye(self.slots, dtype=self.dtype, device=gram.device)
        # unused columns get a unit diagonal and zero right-hand side -> gamma = 0 there
        system = gram + (self.reg * scale)[:, None, None] * eye + torch.diag_embed(1 - mask)
        gamma, _ = torch.linalg.solve_ex(system, rhs * mask)
        return torch.nan_to_num(gamma) * mask

    def _frame_correction(self, fit: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(dY + dG) gamma`` with one ``gamma`` per latent frame, fitted to that frame's part of ``fit``
        and ``target`` (its latents, or the pixel frames it decodes to), as ``(B, n)``."""
        layout, batch, slots = self.frames, fit.shape[0], self.slots
        outer, frames, inner = layout.latent
        pixel = self.pixel_mixing
        fit = fit.view(batch, slots, *(layout.pixel if pixel else layout.latent))
        target = target.view(batch, *(layout.pixel if pixel else layout.latent))
        both = (self.dy + self.dg).view(batch, slots, outer, frames, inner)
        correction = torch.empty(batch, outer, frames, inner, dtype=self.dtype, device=fit.device)
        for t in range(frames):
            part = layout.pixel_frames(t) if pixel else slice(t, t + 1)
            f = fit[:, :, :, part].reshape(batch, slots, -1)  # a copy of one frame's history (a view if outer is 1)
            gamma = self._weights(torch.bmm(f, f.transpose(1, 2)),
                                  torch.bmm(f, target[:, :, part].reshape(batch, -1, 1))[..., 0], mask)
            correction[:, :, t] = torch.bmm(gamma[:, None, :], both[:, :, :, t].reshape(batch, slots, -1)) \
                .view(batch, outer, inner)
        return correction.view(batch, -1)
