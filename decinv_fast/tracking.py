"""Per-sample best-iterate tracking and early stopping, by masking (no Python loop over samples).

The criterion is the pixel error ``||D(y_k) - x||`` of the point ``y_k`` whose decoding the step
just computed (``y_k = z_k`` except for KM): it needs no ground truth and costs one subtraction,
since ``D(y_k)`` is computed anyway. The iteration is semi-convergent (the latent residual keeps
falling while the true latent error turns back up), and the pixel error bottoms out close to the
latent error's minimum (see benchmarks/stopping.py).

Each sample stops, independently of the others, when its relative latent residual falls below
``tol`` or its criterion has not improved for ``patience`` steps. A stopped sample's returned latent
is fixed at that moment (the best point if ``keep_best``, else the point it stopped at); the batch
keeps stepping until every sample has stopped, so each sample's result equals a run on it alone.

With ``keep_best``, a sample whose criterion goes non-finite stops there too ("diverged"), before that
step counts among its steps: its best point is finite and the other samples run on (without
``keep_best`` there is no finite point to return, and the run is an error, see ``outcome.py``).

``earliest_stop = s`` (a video's ``first_frame_join``): ``tol`` and ``patience`` stop no sample before step ``s``,
the first to evaluate the point that took the first frames' result, so no sample returns without it having been
evaluated (a sample that diverges still stops).
"""

from __future__ import annotations

import torch

REASONS = ("steps", "tol", "patience", "diverged")


class Tracker:
    """Device-side state of best iterates and stops for a batch of ``B`` samples."""

    def __init__(self, y: torch.Tensor, *, keep_best: bool, tol: float | None, patience: int | None,
                 error_dtype: torch.dtype = torch.float32, earliest_stop: int = 0):
        """``error_dtype``: of the criterion, as the caller computes it (float64 for L-BFGS in fp64,
        whose objective keeps improving below fp32's resolution); ``earliest_stop``: the first step at which
        ``tol`` or ``patience`` may stop a sample."""
        batch = y.shape[0]
        device = y.device
        # a patience beyond int64's range (any beyond the run's steps never stops a sample) compares as 2**62
        self.keep_best, self.tol, self.patience = keep_best, tol, None if patience is None else min(patience, 2**62)
        self.earliest_stop = earliest_stop
        self.best_error = torch.full((batch,), float("inf"), dtype=error_dtype, device=device)
        self.best_step = torch.zeros(batch, dtype=torch.int64, device=device)
        self.stale = torch.zeros(batch, dtype=torch.int64, device=device)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.reason = torch.zeros(batch, dtype=torch.int64, device=device)  # index into REASONS
        self.stop_step = torch.full((batch,), -1, dtype=torch.int64, device=device)
        self.best = y.clone() if keep_best else None  # the best evaluated point of each sample
        self.out = y.clone()  # each stopped sample's returned point
        self.out_step = torch.zeros(batch, dtype=torch.int64, device=device)

    @property
    def needs_sync(self) -> bool:
        """Whether the loop must look at ``active`` on the host to stop early."""
        return self.tol is not None or self.patience is not None

    def observe(self, step: torch.Tensor, y: torch.Tensor, pixel_sq: torch.Tensor,
                rel_residual: torch.Tensor | None) -> None:
        """Step ``step`` (a one-element device tensor) evaluated ``y`` (``(B, n)``) with per-sample
        pixel error² and relative latent residual (read only with ``tol``; may be None without).
        Every buffer is updated in place, so this can be captured in a CUDA graph and replayed."""
        k = step.expand_as(self.best_step)
        improved = pixel_sq < self.best_error  # never for NaN
        broken = ~torch.isfinite(pixel_sq) if self.keep_best else torch.zeros_like(self.active)
        self.reason.masked_fill_(self.active & broken, REASONS.index("diverged"))
        stop = broken.clone()
        _keep(self.best_error, improved, pixel_sq)
        _keep(self.best_step, improved, k)
        self.stale.add_(1).masked_fill_(improved, 0)
        if self.best is not None:
            _keep(self.best, improved[:, None], y)
        allowed = k >= self.earliest_stop
        if self.tol is not None:
            hit = (rel_residual < self.tol) & allowed
            self.reason.masked_fill_(self.active & hit & ~stop, REASONS.index("tol"))
            stop |= hit
        if self.patience is not None:
            tired = (self.stale >= self.patience) & allowed
            self.reason.masked_fill_(self.active & tired & ~stop, REASONS.index("patience"))
            stop |= tired
        newly = self.active & stop
        chosen, chosen_step = (self.best, self.best_step) if self.best is not None else (y, k)
        _keep(self.out, newly[:, None], chosen)
        _keep(self.out_step, newly, chosen_step)
        _keep(self.stop_step, newly, k + 1 - broken.long())  # a diverged step does not count
        self.active &= ~stop

    def finish(self, final: torch.Tensor, steps_run: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents (B, n), returned step (B,))``: stopped samples as fixed when they stopped; the
        others their best evaluated point (``keep_best``) or ``final`` (= ``z_steps_run``)."""
        running = self.active
        self.stop_step = torch.where(running, torch.full_like(self.stop_step, steps_run), self.stop_step)
        if self.best is not None:
            rest, rest_step = self.best, self.best_step
        else:
            rest, rest_step = final, torch.full_like(self.best_step, steps_run)
        latents = torch.where(running[:, None], rest, self.out)
        return latents, torch.where(running, rest_step, self.out_step)

    def reasons(self) -> list[str]:
        return [REASONS[i] for i in self.reason.tolist()]


def _keep(buffer: torch.Tensor, where: torch.Tensor, value: torch.Tensor) -> None:
    """``buffer[where] = value[where]`` in place (broadcasting ``where``)."""
    buffer.copy_(torch.where(where, value, buffer))
