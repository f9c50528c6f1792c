"""From a finished iteration to the :class:`InversionResult` ``invert`` returns: each stopped sample's
histories cut where it stopped, an error naming the samples that went non-finite, a warning for a
finite divergence, and the backend that ran the update."""

from __future__ import annotations

import warnings

import torch

from ._dispatch import resolve_backend
from .adapters import upcast_hint
from .inputs import Frames
from .loop import Plan
from .options import fused_update, option
from .result import InversionResult


def until_stopped(history: torch.Tensor, stop_step: torch.Tensor) -> torch.Tensor:
    """``(steps, B)`` per-step values with each stopped sample's later entries replaced by its value
    at the last step it ran: the batch goes on evaluating it, but a run on it alone ends there."""
    steps = history.shape[0]
    last = torch.where(stop_step < 0, steps, stop_step).clamp(1, steps) - 1
    rows = torch.minimum(torch.arange(steps, device=history.device)[:, None], last.to(history.device)[None])
    return history.gather(0, rows)


def shaped(frames: Frames, latents: torch.Tensor) -> torch.Tensor:
    """Frame-major latents given the user's layout back (a view)."""
    return frames.restore(latents.reshape(frames.latent_shape(latents.shape[1:])))


def _ran(plan: Plan) -> str:
    """The method and step size a run took, as the caller would have named them (auto's is its own)."""
    return f"method={plan.label!r}" + ("" if plan.named else f", lr={plan.lr}")


def failed_at_start(iteration, bad: list[int]) -> bool:
    """Whether every sample in ``bad`` was non-finite at its first evaluation, at ``E(x)``, before any step."""
    first = torch.isfinite(iteration.history[0]) & torch.isfinite(iteration.pixel_history[0])
    return bool((~first[bad]).all())


def divergence_hint(iteration, dtype: torch.dtype, plan: Plan, at_start: bool = False) -> str:
    """What to try after a run went non-finite: the likeliest cause first (``at_start``: it was non-finite at
    ``E(x)``, before any step, which no step size causes)."""
    half = dtype in (torch.float16, torch.bfloat16)
    upcast = upcast_hint(iteration.adapter, dtype)
    if at_start:
        step = ("the first evaluation, D(E(x)) or E(D(E(x))), is non-finite before any step (no step size causes "
                "that): check "
                + ("that decode_fn is defined at E(x)" if iteration.adapter.module is None else "the VAE's weights"))
        return f"{step}, or use dtype=torch.float32{upcast}" if half else step
    if plan.method == "grad" and half:
        return "gradient-based inversion underflows in half precision, use dtype=torch.float32"
    if plan.named == "auto":  # its step size and options are not the caller's to lower
        step = (f"method='auto' (anderson at lr {plan.lr} with mean_gain {option(plan.options, 'mean_gain')}) steps "
                "too far for this VAE: try method='anderson' with a smaller lr")
    elif option(plan.options, "mean_gain") == 1.0:
        step = "try a smaller lr"
    else:
        step = "try a smaller rho x mean_gain (about 1.5 at most)"
    if iteration.adapter.module is None:  # the pair's decoder is run unchecked each step, as a VAE's is
        step += " (or check that decode_fn returns finite pixels)"
    return f"{step}, or dtype=torch.float32{upcast}" if half else step


def check_first_evaluation(iteration) -> None:
    """In half precision, a VAE's non-finite first evaluation (before any update could have caused it) is the
    VAE overflowing: an error at once, as for ``E(x)`` (:func:`~decinv_fast.adapters.check_output_finite`), not a
    sample returned as diverged or a step size blamed. The decoding ``D(E(x))`` is checked first, then its
    re-encoding ``E(D(E(x)))`` (read from the step's residual). An ``(encode_fn, decode_fn)`` pair's ``decode_fn``
    may be undefined there (its sample then ends as any divergence does)."""
    dtype = iteration.x.dtype
    if dtype not in (torch.float16, torch.bfloat16) or iteration.adapter.module is None or \
            iteration.x.device.type == "meta":
        return
    for output, first in (("decoder's output D(E(x))", iteration.pixel_history[0]),
                          ("encoder's output E(D(E(x)))", iteration.history[0])):
        finite = torch.isfinite(first)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[:, 0].tolist()
            raise FloatingPointError(f"the {output} is non-finite in {dtype} in sample(s) {bad} of {finite.numel()}; "
                                     f"use dtype=torch.float32{upcast_hint(iteration.adapter, dtype)}")


GREW, GREW_FLOOR = 1.5, 0.01  # a last relative residual above 1.5x the first and 1 % is a diverging run


def warn_if_residual_grew(per_step: torch.Tensor, plan: Plan) -> None:
    """Warn when samples end with a relative residual ``GREW`` times their first one and above
    ``GREW_FLOOR``: a finite divergence (too large a step; with ``mean_gain``, rho times the gain too
    large), whose last iterate is returned since ``keep_best`` is off. (Starting at an exact answer,
    Adam's fixed-size steps move away a little: 2e-7 -> 4e-4 is not a divergence.)"""
    grew = (per_step[-1] > GREW * per_step[0]) & (per_step[-1] > GREW_FLOOR)
    if not bool(grew.any()):
        return
    worst = int((per_step[-1] / per_step[0].clamp_min(1e-30)).argmax())
    gain = option(plan.options, "mean_gain")
    secant = bool(plan.options.get("auto_rho"))
    rho = "the secant step (lr='auto')" if secant else str(plan.lr)
    cause = (f"rho x mean_gain = {rho} x {gain} is likely too large (keep it below about 1.5)" if gain != 1.0
             else f"{'the secant step' if secant else f'lr={plan.lr}'} is likely too large for this VAE")
    warnings.warn(f"inversion diverged for {int(grew.sum())} of {grew.numel()} sample(s) (method={plan.label!r}): "
                  f"the relative residual ended above {GREW}x where it started and above {GREW_FLOOR} (sample {worst}: "
                  f"{float(per_step[0, worst]):.3g} -> {float(per_step[-1, worst]):.3g}); the last iterate is "
                  f"returned. {cause}; or pass keep_best=True to return each sample's best iterate",
                  RuntimeWarning, stacklevel=4)


def warn_of_diverged(reasons: list[str], finite_history: list[bool], stopped: torch.Tensor, iteration,
                     dtype: torch.dtype, plan: Plan) -> list[str]:
    """With ``keep_best``: the stop reasons with every sample whose run went non-finite marked
    ``"diverged"`` (the tracker stops one whose pixel error does; a residual that went non-finite at the
    last step is found here), and a warning naming them: each returns its best point, which is finite."""
    reasons = ["diverged" if not ok else why for why, ok in zip(reasons, finite_history, strict=True)]
    bad = [i for i, why in enumerate(reasons) if why == "diverged"]
    if bad:
        others = "; the others ran on" if len(bad) < len(reasons) else ""
        warnings.warn(f"inversion diverged: non-finite values in {dtype} in sample(s) {bad} of {len(reasons)} after "
                      f"{stopped[bad].tolist()} step(s) ({_ran(plan)}); each returns its "
                      f"best point (keep_best){others}; "
                      f"{divergence_hint(iteration, dtype, plan, failed_at_start(iteration, bad))}",
                      RuntimeWarning, stacklevel=4)
    return reasons


def build_result(iteration, frames: Frames, latents, returned, steps_run, seconds, peak_bytes, plan) -> InversionResult:
    history, pixel_history = iteration.history[:steps_run], iteration.pixel_history[:steps_run]
    tracker = iteration.tracker
    if tracker is not None:
        history, pixel_history = (until_stopped(h, tracker.stop_step) for h in (history, pixel_history))
    denom, pixel_denom = iteration.residual_norm, iteration.pixel_norm
    finite = torch.isfinite(latents.reshape(frames.batch, -1)).all(1)
    finite_history = torch.isfinite(history).all(0)
    if not plan.keep_best:  # the last iterate is returned: a non-finite step leaves nothing to return
        finite &= finite_history
    if not bool(finite.all()):
        bad = (~finite).nonzero()[:, 0].tolist()
        which = f"sample(s) {bad} of {frames.batch}" + ("; the others stayed finite" if len(bad) < frames.batch else "")
        hint = divergence_hint(iteration, latents.dtype, plan, failed_at_start(iteration, bad))
        keep = "" if plan.keep_best else "; or pass keep_best=True to return each sample's best point"
        raise FloatingPointError(f"inversion diverged: non-finite values in {latents.dtype} in {which} "
                                 f"({_ran(plan)}); {hint}{keep}")
    per_step = (history.sqrt() / denom).cpu()
    counted = torch.isfinite(history)  # a diverged sample (keep_best) leaves the batch's curve where it is non-finite
    residuals = (torch.where(counted, history, 0).sum(1).sqrt() / (counted * denom.square()).sum(1).sqrt()).cpu()
    if not plan.keep_best:
        warn_if_residual_grew(per_step, plan)
    if tracker is None:
        returned = torch.full((frames.batch,), steps_run, dtype=torch.int64)
        stopped, reasons = returned.clone(), ["steps"] * frames.batch
    else:
        stopped, reasons = tracker.stop_step.cpu(), tracker.reasons()
    if plan.keep_best:
        reasons = warn_of_diverged(reasons, finite_history.tolist(), stopped, iteration, latents.dtype, plan)
    return InversionResult(
        latents=shaped(frames, latents), residuals=residuals, per_sample_residual=per_step[-1],
        residual_history=per_step, steps_run=steps_run, seconds=seconds, peak_bytes=peak_bytes,
        method=plan.label, dtype=latents.dtype, backend=update_backend(iteration, plan),
        pixel_residual_history=(pixel_history.sqrt() / pixel_denom).cpu(),
        returned_step=returned.cpu(), stopped_at=stopped, stop_reason=reasons,
        lr="auto" if plan.options.get("auto_rho") else plan.lr, chunk_frames=plan.chunk * frames.frames_per_row,
        keep_best=plan.keep_best, patience=plan.patience,
        secant_lr=iteration.scale.float().cpu() if plan.options.get("auto_rho") else None,
    )


def update_backend(iteration, plan: Plan) -> str:
    """The backend that ran the update: the one ``plan.backend`` resolves to for the fused ops,
    ``"torch"`` for the methods that update with torch ops."""
    if not fused_update(plan.method, plan.options):
        return "torch"
    return resolve_backend(f"{plan.method}_residual_step", iteration.per_sample(iteration.z), plan.backend)
