"""``method="grad", optimizer="lbfgs"``: per-sample L-BFGS on the pixel error, batched by masking.

The rule is :func:`decinv_fast.reference.gradient_based_lbfgs`'s: each step decodes and
back-propagates one trial point per sample, accepts it on sufficient decrease (Armijo) or shrinks
that sample's step, and after an acceptance steps along the L-BFGS direction. Every sample has its
own history, step length and acceptances, held in ``(B, ...)`` tensors and updated with
``torch.where``, so a sample's result equals a run on it alone.

State per sample (fp32, fp64 for fp64 latents): the accepted point, its gradient and direction,
the best point, and ``memory`` pairs ``(s, y)``: ``2 * memory + 4`` latents, beside the trial point and
its gradient in the latents' dtype.
"""

from __future__ import annotations

import torch

from .adapters import VaeAdapter
from .inputs import Frames
from .loop import PixelErrorIteration, Plan, pixel_error_backward
from .options import math_dtype, option
from .reference import LBFGS_ARMIJO
from .tracking import Tracker


def two_loop(g: torch.Tensor, s: torch.Tensor, y: torch.Tensor, inv_sy: torch.Tensor) -> torch.Tensor:
    """``-H g`` for every sample: ``g`` ``(B, n)``; ``s``, ``y`` ``(m, B, n)`` oldest first, empty slots
    zero; ``inv_sy`` ``(m, B)`` ``1 / <s, y>`` (zero for empty slots, which then change nothing)."""
    q = g.clone()
    alphas = []
    for i in reversed(range(s.shape[0])):
        alpha = inv_sy[i] * (s[i] * q).sum(1)
        q -= alpha[:, None] * y[i]
        alphas.append(alpha)
    newest_yy = (y[-1] * y[-1]).sum(1)
    has_pairs = inv_sy[-1] > 0
    gamma = torch.where(has_pairs, 1 / (inv_sy[-1] * newest_yy.clamp_min(1e-300)), torch.ones_like(newest_yy))
    q *= gamma[:, None]
    for i, alpha in zip(range(s.shape[0]), reversed(alphas), strict=True):
        beta = inv_sy[i] * (y[i] * q).sum(1)
        q += (alpha - beta)[:, None] * s[i]
    return -q


class LbfgsIteration(PixelErrorIteration):
    """Gradient-based inversion by L-BFGS: one decoder forward + backward per step (``chunk`` frames at
    a time), the line search and the history per sample. ``history[k]`` is each sample's accepted
    pixel error² after step ``k``. The tracker sees the accepted points, each of which is the best
    point evaluated so far, so it always keeps the best (``keep_best`` changes nothing) and the
    returned step is the step that evaluated it."""

    def __init__(self, adapter: VaeAdapter, frames: Frames, plan: Plan):
        e_x = self._start(adapter, frames, plan)
        self.trial = e_x.clone().requires_grad_(True)
        batch, device = frames.batch, e_x.device
        self.math = math_dtype(e_x.dtype)
        flat = e_x.detach().view(batch, -1).to(self.math)
        memory = option(plan.options, "memory")  # >= 1: check_options refuses less for grad
        self.z, self.g, self.d = flat.clone(), torch.zeros_like(flat), torch.zeros_like(flat)
        self.f = torch.full((batch,), float("inf"), dtype=self.math, device=device)
        self.t = torch.zeros(batch, dtype=self.math, device=device)
        self.s = torch.zeros(memory, *flat.shape, dtype=self.math, device=device)
        self.y = torch.zeros_like(self.s)
        self.inv_sy = torch.zeros(memory, batch, dtype=self.math, device=device)
        self.tracker = Tracker(flat, keep_best=True, tol=plan.tol, patience=plan.patience, error_dtype=self.math)

    def run_step(self) -> None:
        batch = self.frames.batch
        self.trial.grad = None
        sq = pixel_error_backward(self.adapter, self.trial, self.x, self.plan.chunk, self.fpv, self.clip_aware,
                                  self.math)
        f_try = sq.view(batch, -1).sum(1)
        g_try = self.trial.grad.view(batch, -1).to(self.math)
        point = self.trial.detach().view(batch, -1).to(self.math)
        finite = torch.isfinite(f_try) & torch.isfinite(g_try).all(1)
        slope = (self.g * self.d).sum(1)
        accept = finite & (f_try <= self.f + LBFGS_ARMIJO * self.t * slope)
        self._remember(accept, point, g_try)
        self.z = torch.where(accept[:, None], point, self.z)
        self.g = torch.where(accept[:, None], g_try, self.g)
        self.f = torch.where(accept, f_try, self.f)
        self._next_trial(accept, finite, f_try, slope)
        self.history[self.k] = self.f.float()
        self.tracker.observe(self.step, self.z, self.f, self.f.sqrt() / self.residual_norm)
        self.k += 1
        self.step += 1

    def _remember(self, accept: torch.Tensor, point: torch.Tensor, g_try: torch.Tensor) -> None:
        """Push ``(s, y)`` into the accepting samples' histories when the curvature ``<s, y>`` is positive."""
        s, y = point - self.z, g_try - self.g
        sy = (s * y).sum(1)
        push = accept & torch.isfinite(self.f) & (sy > 0)
        keep = push[None, :, None]
        self.s = torch.where(keep, torch.cat([self.s[1:], s[None]]), self.s)
        self.y = torch.where(keep, torch.cat([self.y[1:], y[None]]), self.y)
        inv = torch.where(sy > 0, 1 / sy.where(sy > 0, torch.ones_like(sy)), torch.zeros_like(sy))
        self.inv_sy = torch.where(push[None], torch.cat([self.inv_sy[1:], inv[None]]), self.inv_sy)

    def _next_trial(self, accept, finite, f_try, slope) -> None:
        direction = two_loop(self.g, self.s, self.y, self.inv_sy)
        steepest = (self.inv_sy[-1] == 0) | ((self.g * direction).sum(1) >= 0)
        restart = accept & steepest  # no pairs yet, or no descent: drop the pairs, go along -g
        self.s = torch.where(restart[None, :, None], torch.zeros_like(self.s), self.s)
        self.y = torch.where(restart[None, :, None], torch.zeros_like(self.y), self.y)
        self.inv_sy = torch.where(restart[None], torch.zeros_like(self.inv_sy), self.inv_sy)
        direction = torch.where(restart[:, None], -self.g, direction)
        first_t = self.plan.lr / self.g.abs().amax(1).clamp_min(1e-30)
        curve = f_try - self.f - slope * self.t  # used for the rejected samples, whose f is still the old one
        quad = torch.where(curve > 0, -slope * self.t * self.t / (2 * curve.where(curve > 0, torch.ones_like(curve))),
                           0.5 * self.t)
        shrunk = torch.where(finite, torch.minimum(torch.maximum(quad, 0.1 * self.t), 0.5 * self.t), 0.1 * self.t)
        accepted_t = torch.where(restart, first_t, torch.ones_like(first_t))
        self.t = torch.where(accept, accepted_t, shrunk)
        self.d = torch.where(accept[:, None], direction, self.d)
        with torch.no_grad():
            trial = self.z + self.t[:, None] * self.d
            self.trial.copy_(trial.view_as(self.trial))

    def finish(self, steps_run: int) -> tuple[torch.Tensor, torch.Tensor]:
        latents, returned = self.tracker.finish(self.z, steps_run)
        return latents.to(self.trial.dtype).view_as(self.trial), returned

    @property
    def latents(self) -> torch.Tensor:
        return self.z.to(self.trial.dtype).view_as(self.trial)
