"""What ``invert`` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(repr=False)
class InversionResult:
    """The inverted latents and how the run went.

    Attributes:
        latents: ``(B, C, h, w)`` (or ``(B, F, C, h, w)`` for videos; ``(B, C, f, h, w)`` from a video VAE
            that compresses time) in the pipeline's latent space, ``(mode - shift_factor) * scaling_factor``
            (or the VAE's per-channel form, see ``adapters.LatentSpace``); no batch dimension if the input had none.
        residuals: ``(steps_run,)`` relative residual of the whole batch at each step,
            ``||E(D(z_k)) - E(x)|| / ||E(x)||`` (for ``method="grad"``: ``||D(z_k) - x|| / ||x||``,
            the quantity it minimises). Entry k belongs to the point the k-th update was computed at.
            A sample whose evaluation was non-finite there (``"diverged"``, with ``keep_best``) is left out.
        per_sample_residual: ``(B,)`` the last step's relative residual of each sample (of a sample
            that stopped early: at the last step it ran, as a run on it alone reports).
        residual_history: ``(steps_run, B)`` every step's relative residual of each sample; after a
            sample stopped, its last value repeats. Relative errors are absolute where the denominator
            is zero (an all-zero image).
        steps_run: steps taken (fewer than asked when ``tol`` stopped the run).
        seconds: wall time of the call.
        peak_bytes: CUDA allocator peak during the call on a GPU (weights included); on the CPU the
            peak of the bytes PyTorch's CPU allocator handed out beyond those allocated when the call
            began (weights and inputs excluded; not the process's resident memory, see
            :mod:`decinv_fast.memory`); ``None`` if not measurable.
        method, dtype, backend: the method asked for (``"auto"`` runs ``anderson`` with
            ``options.AUTO``), the latents' dtype and the backend that ran the update (``"cuda"``,
            ``"triton"``, ``"torch"`` or ``"reference"``; ``"torch"`` for the methods that update with
            torch ops).
        pixel_residual_history: ``(steps_run, B)`` relative pixel error ``||D(y_k) - x|| / ||x||`` of
            the point each step evaluated (no ground truth needed; see ``keep_best``). For grad's
            L-BFGS: of the last accepted point (a rejected trial leaves it unchanged).
        returned_step: ``(B,)`` which iterate each sample's latent is: k means the point step k
            evaluated, ``z_k`` (``y_k = z_k + alpha (z_k - z_{k-1})`` for km; 0 = ``E(x)``);
            ``steps_run`` is the last update's result.
        stopped_at: ``(B,)`` the number of steps after which each sample stopped.
        stop_reason: per sample, ``"steps"`` (ran them all), ``"tol"``, ``"patience"`` or, with
            ``keep_best``, ``"diverged"`` (its run went non-finite: it returns its best point, and its
            histories end with the step before its first non-finite evaluation, or with the non-finite
            residual itself when only that went non-finite).
        lr, chunk_frames, keep_best, patience: what the run used where the call left it to the
            method or the planner: the step size (the method's default when not given; ``"auto"``: the
            per-sample secant step), the frames per encoder/decoder call (``chunk_frames="auto"``: the
            planner's choice), whether each sample returned its best iterate, and the patience.
        secant_lr: with ``lr="auto"``, ``(B,)`` the secant step size each sample took from its second step on
            (its first step takes 1; the schedule's factor applies on top; 1 where it had no usable curvature
            or ran one step); ``None`` otherwise.
        first_frame_steps: ``(B,)`` the steps each video's first frame took alone before the whole run
            (``first_frame_steps``, ``decinv_fast.first_frame``; each costs ``1 / F`` of an evaluation of a video
            of F frames, and the other fields are the whole run's); ``None`` where it did not run.
        second_frame_steps: the steps every video's first ``1 + t`` frames (its first two latent frames, ``t`` the
            VAE's temporal compression) took alone from ``E(x)`` before the whole run (``second_frame_steps``,
            ``decinv_fast.first_frame``; each costs ``(1 + t) / F`` of an evaluation); ``None`` where it did not run.
    """

    latents: torch.Tensor
    residuals: torch.Tensor
    per_sample_residual: torch.Tensor
    residual_history: torch.Tensor
    steps_run: int
    seconds: float
    peak_bytes: int | None
    method: str
    dtype: torch.dtype
    backend: str
    pixel_residual_history: torch.Tensor
    returned_step: torch.Tensor
    stopped_at: torch.Tensor
    stop_reason: list[str]
    lr: float | str | None = None
    chunk_frames: int | None = None
    keep_best: bool = False
    patience: int | None = None
    secant_lr: torch.Tensor | None = None
    first_frame_steps: torch.Tensor | None = None
    second_frame_steps: int | None = None

    def __repr__(self) -> str:
        """One line of what happened (the dataclass default would print every tensor in full)."""
        peak = "" if self.peak_bytes is None else f", peak {self.peak_bytes / 2**20:.1f} MiB"
        reasons = sorted(set(self.stop_reason))
        secant = "" if self.secant_lr is None else f", secant_lr {_compact(self.secant_lr, '{:.3g}')}"
        return (f"InversionResult(method={self.method!r}, latents {tuple(self.latents.shape)} "
                f"{str(self.dtype).removeprefix('torch.')}, steps_run={self.steps_run}, residual "
                f"{float(self.residuals[0]):.4g} -> {float(self.residuals[-1]):.4g}, returned_step "
                f"{_compact(self.returned_step)}{secant}, stopped by {'/'.join(reasons)}, {self.seconds:.2f} s{peak}, "
                f"backend={self.backend!r})")


def _compact(values: torch.Tensor, form: str = "{:d}", shown: int = 8) -> str:
    items = [form.format(v.item()) for v in values.flatten()[:shown]]
    return "[" + ", ".join(items) + (", ..." if values.numel() > shown else "") + "]"
