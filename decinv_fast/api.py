"""Public, drop-in API: ``invert``, ``encode``, ``decode``, ``nmse_db``."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings

import torch
from tqdm.auto import tqdm

from . import first_frame, reference
from ._dispatch import check_backend_name
from .adapters import VaeAdapter, as_adapter, check_output_finite
from .attention import attention_backend
from .eval_mode import eval_mode
from .graphs import GraphedStep
from .inputs import Frames, as_videos, check_latent_size, check_latents, to_frames
from .loop import Plan, check_steps_fit, chunks, encode_frames, make_iteration
from .memory import PeakMemory
from .options import (
    AUTO,
    METHODS,
    auto_overrides,
    caller_stacklevel,
    check_compile,
    check_dtype,
    check_flag,
    check_fp32_master,
    check_int,
    check_options,
    check_positive,
    fused_update,
    is_int,
    tensor_hint,
)
from .outcome import build_result, check_first_evaluation, shaped
from .result import InversionResult


def _working_vae(vae, adapter: VaeAdapter, dtype: torch.dtype | None):
    """The adapter to run with: the user's VAE, or a converted copy if ``dtype`` differs (the
    user's VAE is never modified)."""
    if adapter.module is None:
        return adapter
    if dtype is None:  # its own dtype: one, or an error
        return _one_weight_dtype(adapter)
    if _weight_dtypes(adapter) == {dtype}:
        return adapter
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its .to() warns about fp32-kept modules; VAEs have none
    try:
        return as_adapter(copy.deepcopy(adapter.module).to(dtype), decode_timestep=adapter.decode_timestep)
    finally:
        diffusers_logging.set_verbosity(level)


def _weight_dtypes(adapter: VaeAdapter) -> set[torch.dtype]:
    return set() if adapter.module is None else {p.dtype for p in adapter.module.parameters() if p.is_floating_point()}


def _one_weight_dtype(adapter: VaeAdapter) -> VaeAdapter:
    """``adapter``, or a TypeError naming ``vae`` if its weights mix float dtypes (e.g. a half decoder only)."""
    if len(dtypes := _weight_dtypes(adapter)) > 1:
        raise TypeError(f"vae: its weights mix dtypes {sorted(map(str, dtypes))}; pass dtype= to run a converted "
                        "copy (the VAE is left as it is), or convert it with vae.to(dtype)")
    return adapter


def _frames_for(adapter: VaeAdapter, images, dtype: torch.dtype | None) -> Frames:
    frames = to_frames(images, device=adapter.device, dtype=dtype or adapter.dtype,
                       spatial_factor=adapter.spatial_factor, channels=adapter.image_channels)
    check_latent_size(*frames.pixels.shape[-2:], adapter, "images")
    if adapter.encodes_videos:
        return as_videos(frames, adapter.frame_step, adapter.kind)
    if adapter.temporal and frames.frames is None and frames.batch > 1:
        warnings.warn(f"images: {frames.batch} images without a frame axis, so {adapter.kind} decodes each on its "
                      "own, as a 1-frame video; one video's frames are decoded together only as (1, F, 3, H, W) "
                      "or [frames] (a list of lists of PIL frames)", UserWarning, stacklevel=caller_stacklevel())
    return frames


def _chunk_for(adapter: VaeAdapter, frames: Frames, chunk_frames, method: str, options: dict,
               attention: str = "auto", fp32_master: bool | None = None) -> int:
    total = frames.pixels.shape[0]
    if chunk_frames is None:
        return total
    if chunk_frames == "auto":
        from .planner import auto_chunk

        # frames, whole videos for the VAEs that mix them: as rows of frames.pixels
        return auto_chunk(adapter, frames, method, options, attention, fp32_master) // frames.frames_per_row
    if not is_int(chunk_frames) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive int, 'auto' or None, got {chunk_frames!r}")
    if (adapter.temporal or adapter.encodes_videos) and chunk_frames % frames.frames_per_video:
        mixes = "in its causal encoder and decoder" if adapter.encodes_videos else "in its decoder"
        raise ValueError(
            f"chunk_frames={chunk_frames}: {adapter.kind} mixes the frames of a video {mixes}, so "
            f"a chunk must hold whole videos (a multiple of {frames.frames_per_video} frames)"
        )
    return min(chunk_frames // frames.frames_per_row, total)  # rows of frames.pixels: frames, or whole videos


def prepare_run(vae, images, *, method: str = "adam", steps: int = 50, lr: float | str | None = None,
                schedule: str | None = None, dtype: torch.dtype | None = None, tol: float | None = None,
                backend: str = "auto", chunk_frames: int | str | None = None, cuda_graphs: bool = False,
                compile: bool | str = False, fp32_master: bool | None = None, keep_best: bool | None = None,
                patience: int | None = None, attention: str = "auto",
                **method_options) -> tuple[VaeAdapter, Frames, Plan]:
    """Validate :func:`invert`'s arguments (clear errors naming each) and lay the run out: the adapter
    to run with, the frames and the :class:`~decinv_fast.loop.Plan`. ``make_iteration(*prepare_run(...))``
    is the iteration ``invert`` steps (benchmarks time it without ``invert``'s wrapper)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not is_int(steps) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}{tensor_hint(steps)}")
    steps = int(steps)
    if schedule is not None and schedule not in reference.SCHEDULES:
        raise ValueError(f"schedule must be one of {reference.SCHEDULES} or None, got {schedule!r}")
    if keep_best is not None:  # None: the method's default (fp32_master's check is check_fp32_master's)
        check_flag("keep_best", keep_best)
    check_flag("cuda_graphs", cuda_graphs)
    check_compile(compile)
    check_dtype(dtype)
    if tol is not None:
        check_positive("tol", tol)
    if patience is not None:
        check_int("patience", patience, 1)
    check_backend_name(backend)
    named = "auto" if method == "auto" else None
    if named:
        refused = auto_overrides(lr, schedule, keep_best, method_options)
        if chosen := {k: v for k, v in refused.items() if k not in ("schedule", "keep_best")}:  # lr, options
            given = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
            raise ValueError(f"method='auto' chooses its own step size and options (got {given}); to change some of "
                             "them, run the anderson method it is: "
                             f"invert(vae, images, **decinv_fast.options.auto_kwargs({given}))")
        if refused:
            raise ValueError(f"method='auto' runs schedule={AUTO['schedule']!r} and keep_best={AUTO['keep_best']}; "
                             "to change them, run the anderson method it is: invert(vae, images, "
                             "**decinv_fast.options.auto_kwargs(schedule=..., keep_best=...))")
        method, lr, schedule = AUTO["method"], AUTO["lr"], AUTO["schedule"]
        keep_best, patience = AUTO["keep_best"], AUTO["patience"] if patience is None else patience
        method_options = dict(AUTO["options"])
    schedule = "paper" if schedule is None else schedule
    lr, options = check_options(method, lr, method_options)
    torch_update = not fused_update(method, options)
    if cuda_graphs and torch_update:
        raise ValueError("cuda_graphs=True works with adam, fsm and km at a fixed step size (and mean_gain 1)")
    if backend not in ("auto", "torch") and torch_update:
        raise ValueError(f"backend={backend!r} picks the fused update kernels of adam, fsm and km at a fixed step "
                         f"size (and mean_gain 1); method={method!r} with these options updates with torch ops: "
                         "use backend='auto' or 'torch'")
    if compile and method == "grad":
        raise ValueError("compile works with the gradient-free methods; method='grad' runs the decoder eagerly "
                         "under autograd")
    check_fp32_master(fp32_master, method)
    if cuda_graphs and compile:
        raise ValueError("cuda_graphs=True and compile=True are alternatives; choose one")
    adapter = _working_vae(vae, as_adapter(vae), dtype)
    if cuda_graphs and adapter.random_decoder:
        raise ValueError(f"cuda_graphs=True: {adapter.kind}'s decoder draws noise (decoder_inject_noise), which "
                         "invert fixes by seeding each call: not in a captured graph")
    frames = _frames_for(adapter, images, dtype)
    check_steps_fit(steps, method, schedule, frames.batch, frames.pixels.device, frames.pixels.dtype)
    chunk = _chunk_for(adapter, frames, chunk_frames, method, options, attention, fp32_master)
    master = None if fp32_master is None else bool(fp32_master)
    plan = Plan(method, steps, lr, schedule, options, backend, chunk, master=master, compile=compile,
                keep_best=bool(keep_best), tol=tol, patience=patience, named=named)  # None: off
    return adapter, frames, plan


def invert(vae, images, *, method: str = "adam", steps: int = 50, lr: float | str | None = None,
           schedule: str | None = None, dtype: torch.dtype | None = None, tol: float | None = None,
           progress: bool = False, backend: str = "auto", chunk_frames: int | str | None = None,
           cuda_graphs: bool = False, compile: bool | str = False, attention: str = "auto",
           fp32_master: bool | None = None, keep_best: bool | None = None, patience: int | None = None,
           measure_memory: bool = True, callback=None, **method_options) -> InversionResult:
    """Find the latent ``z`` whose decoding reproduces ``images``, by gradient-free decoder inversion.

    Drop-in for ``vae.encode(x).latent_dist.mode()`` (scaled and shifted like a diffusers pipeline),
    but solves ``E(D(z)) = E(x)`` with forward passes only (Hong et al., NeurIPS 2024).

    Args:
        vae: a diffusers ``AutoencoderKL``, ``AutoencoderTiny``, ``AutoencoderKLTemporalDecoder``,
            ``AutoencoderDC`` (SANA), ``AutoencoderKLHunyuanImage`` (HunyuanImage 2.1), ``AutoencoderKLFlux2``
            (FLUX.2: its pipelines' 2x2-patched, normalised ``(B, 4 C, H / 16, W / 16)`` latents), a video VAE
            that compresses time (``adapters.VIDEO_VAE_KINDS``: Wan's, Qwen-Image's, CogVideoX's, HunyuanVideo's and
            1.5's, LTX-Video's, LTX-2's, Mochi's, EasyAnimate's, Cosmos's: whole videos of ``1 + k * t`` frames for its
            time compression ``t`` (``1 + 8k`` for CogVideoX), images as 1-frame videos, to ``(B, C, f, h, w)``
            latents; ``AutoencoderKLQwenImage21``: RGBA stills only) or an ``(encode_fn, decode_fn)`` pair.
        images: ``(B, 3, H, W)`` or video ``(B, F, 3, H, W)`` float tensor in [-1, 1] (4 channels, RGBA, for
            Qwen-Image 2.1's VAE; PIL images are converted to RGBA for it, as its pipelines do; a pipeline's
            ``output_type="pt"`` is [0, 1]: pass ``images * 2 - 1``; a tensor wholly in [0, 1] warns), uint8 tensor,
            PIL image(s), a list of lists of PIL frames (videos, as pipelines return ``.frames``),
            NumPy ``(H, W, 3)`` / ``(B, H, W, 3)`` / ``(B, F, H, W, 3)`` uint8 or float in [0, 1]
            (``output_type="np"``), or a list of tensors / arrays of one shape (see ``inputs.py``).
        method: ``"adam"`` (the paper's practical method), ``"fsm"`` (forward step), ``"km"``
            (inertial Krasnoselskii-Mann, option ``alpha``), ``"grad"`` (gradient-based baseline),
            ``"anderson"`` (Anderson-accelerated forward step, option ``memory``) or ``"auto"``
            (the best self-stopping combination on our benchmarks; see ``options.AUTO``).
        steps: iterations (each one decoder + one encoder pass; backward too for ``"grad"``). With ``tol``
            or ``patience`` a bound: what it costs up front is the per-step table (up to 12 bytes a step, 24
            for fp64) and histories of ``(steps, B)`` floats; more than the device's memory holds (the RAM
            available, a GPU's total) is refused before any pass (``loop.up_front_bytes``).
        lr: step size (``rho`` for fsm/km/anderson); defaults 0.01 (adam, grad) and 1.0 (fsm, km,
            anderson); ``"auto"`` for fsm/km/anderson picks a per-sample secant step size
            (``result.secant_lr``).
        schedule: ``"paper"`` (warmup 1/10, cosine 7/10, flat 2/10, over at most 100 steps; the
            default, ``None``, for every method but ``"auto"``, which runs its own ``"constant"``),
            ``"constant"`` or ``"cosine"`` (warmup then cosine to zero, the official gradient-based one).
        dtype: compute dtype; default the VAE's. A VAE in another dtype is copied, never changed.
            Under ``torch.autocast`` a diffusers VAE computes in the autocast dtype, but the iteration
            and the returned latents stay in this one.
        tol: stop each sample once its relative latent residual (for ``"grad"``: its relative pixel
            error) falls below ``tol``, returning the point that reached it (with ``keep_best``: its best
            point so far); the run ends when every sample has stopped (a host sync per step).
        progress: show a tqdm bar with the residual (one host sync per step).
        backend: update-kernel backend, ``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"`` or
            ``"reference"`` (``"auto"``: on a GPU the CUDA extension, else Triton, else torch; torch on the CPU
            and for fp64 latents, which the compiled kernels do not take).
            The fused kernels serve adam, fsm and km at a fixed step size; the other runs (grad,
            anderson, auto, ``lr="auto"``, ``mean_gain``) update with torch ops and take ``"auto"``/``"torch"``.
        chunk_frames: frames per encoder/decoder call: an int, ``"auto"`` (the largest chunk the
            memory planner fits in free memory) or ``None`` (all frames at once). Results do not
            depend on it; peak memory does. Whole videos for temporal VAEs and video VAEs.
        cuda_graphs: capture one whole step (all chunks + the fused update) in a CUDA graph and
            replay it (gradient-free methods; falls back to eager with a warning if capture fails,
            and on a device without CUDA graphs, where it only costs the warm-up steps).
        compile: run the decoder + encoder pass through ``torch.compile`` (``True``: inductor; a
            string: that ``torch.compile`` backend); gradient-free methods.
        attention: ``"auto"`` (the VAE's own processors, with the plain math one replaced by SDPA),
            ``"sdpa"``, ``"xformers"`` or ``"math"``; set on the VAE for the call only.
        fp32_master: (gradient-free methods) with fp16/bf16 latents, keep a fp32 master copy of ``z``
            (of the evaluation point for km, anderson and auto) and run the update math in fp32 (the
            stored ``z``, ``m``, ``v`` stay in the latents' dtype). ``None``: on for
            fp16, off for bf16. In fp16 the official code's Adam second moment ``(1 - b2) g**2``
            flushes to zero for residual entries below about 5.5e-3, which then step by
            ``lr * g / eps`` (up to 55x ``lr``; on the fixture VAE the official fp16 run is worse than
            encoder-only after 10 steps, see benchmarks/accuracy_vs_time.py); ``False`` reproduces that
            official fp16 code bit for bit with the torch backend (the CPU's). The fused GPU kernels
            compute in fp32 and round only what they store. Either way ``m`` and ``v`` are stored in fp16,
            so such an entry's ``v`` is stored as 0 and its next step sees only its own increment: it
            moves by up to ``lr * sqrt((1 - b2**(k+1)) / (1 - b2))`` (5.7x ``lr`` at step 50, not 30x).
            bf16 has fp32's range and does not underflow.
        keep_best: return, per sample, the evaluated iterate with the lowest pixel error
            ``||D(z_k) - x||`` (no ground truth needed; the iteration is semi-convergent). Default
            (``None``): off, but on for ``"auto"``, which always returns its best. A sample that goes
            non-finite then stops there (``stop_reason`` ``"diverged"``, with a warning) and returns its
            best point while the others run on; without ``keep_best`` that is an error.
        patience: stop a sample when its pixel error has not improved for ``patience`` steps.
        measure_memory: report ``peak_bytes``. On a GPU it costs nothing but resets torch's CUDA
            peak statistics (``torch.cuda.reset_peak_memory_stats``: a peak you were tracking starts
            over); on the CPU it runs the PyTorch profiler to read the allocator's events, which slows
            every step (measured: +30 to +60% on the fixture VAE at 64x64, about +5% on the SD-2.1
            layout; benchmarks/overhead.py). Pass False when timing (``peak_bytes`` is then None).
        callback: ``callback(step, latents)`` after every step of the whole run (not those of
            ``first_frame_steps`` on the first frames alone); ``latents`` is a view of the live
            iterate shaped like the result (clone it to keep it).
        **method_options: ``eps``/``betas`` (adam), ``rho`` (fsm, km, anderson), ``alpha`` (km),
            ``memory`` (anderson: history length m, default 5), ``mixing`` (anderson: ``"latent"``,
            the default, fits the mixing weights to the latent residual; ``"pixel"`` to the pixel
            residual ``D(z) - x``, at ``m + 2`` fp32 images per sample), ``safeguard`` (anderson,
            default True: a mixed step that raises the pixel error is replaced by the plain step),
            ``frame_weights`` (anderson, default False; ``auto``: True): fit the mixing weights per latent
            frame of a video rather than per video (see ``decinv_fast.anderson``; images have one frame),
            ``first_frame_steps`` (adam, fsm, km, anderson; default 0; ``auto``: 18): for a video VAE whose first
            latent frame is encoded from the first frame alone and decoded to it alone (Wan's, Mochi's, Cosmos's,
            ...), that many steps on the videos' first frames alone first, whose result the whole run takes as
            its first latent frame; its cap is lowered by ``ceil(k / F)`` for F frames (see
            ``decinv_fast.first_frame``; elsewhere it does not run), ``first_frame_join`` (the same methods;
            default 0, also in ``auto``: the whole run starts there): the whole run's step whose point takes
            it (after ``s`` steps from ``E(x)``; Anderson's history restarts there; ``tol`` and ``patience`` stop
            no video before it), ``first_frame_gain`` (fsm, km, anderson; default: the run's gains; ``auto``:
            1.5): the first frames' run's mean gain, ``second_frame_steps`` (adam, fsm, km, anderson; default 0;
            ``auto``: 3): for such a VAE and videos of three latent frames or more, that many steps from ``E(x)`` on
            the frames of their first two latent frames alone (``1 + t``), whose second latent frame the whole run
            takes with the first (its cap lowered by ``ceil((k + s (1 + t)) / F)`` in all),
            ``residual_blur`` (adam, fsm, km, anderson; default 0: the encoder sees ``D(z)``; ``s > 0``:
            it sees ``x + gaussian_blur(D(z) - x, sigma=s pixels)``, which keeps the 8-bit
            quantization noise out of the fixed point, see ``decinv_fast.filters``), ``mean_gain``
            (fsm, km, anderson; default 1: each frame's per-channel spatial mean of the step is
            multiplied by it, the slowest mode on the fixture VAE; see ``decinv_fast.accelerated``),
            ``mean_gain_clipped`` (fsm, km, anderson; default ``mean_gain``; ``auto``: 1): the gain for a sample
            whose image has at least 0.1 % of its values at +-1,
            ``clip_aware`` (every method; default False; ``auto``: True): pixels the image holds at +-1
            are taken as clipped by the pipeline that saved it, so a decoding beyond them counts as a
            match (the encoder, the pixel error and grad's loss see ``D(z)`` clipped there; see
            ``decinv_fast.clipping``), ``optimizer`` (grad: ``"adam"``, the paper's, or ``"lbfgs"``:
            per-sample L-BFGS with a backtracking line search over ``memory`` pairs, default 5; ``lr``
            is then the largest per-element move of a steepest-descent step and ``schedule`` does not
            apply; it returns the best point it evaluated, see ``decinv_fast.lbfgs``).
    """
    check_flag("progress", progress)  # no None here: its default is not "the method decides"
    check_flag("measure_memory", measure_memory)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(step, latents) or None, got {callback!r}")
    # grad needs autograd even when called under torch.inference_mode (e.g. inside a pipeline's __call__),
    # also for the VAE copy and the pixels prepare_run makes (inference tensors cannot be saved for backward)
    autograd = torch.inference_mode(False) if method == "grad" else contextlib.nullcontext()
    with autograd:
        adapter, frames, plan = prepare_run(
            vae, images, method=method, steps=steps, lr=lr, schedule=schedule, dtype=dtype, tol=tol, backend=backend,
            chunk_frames=chunk_frames, cuda_graphs=cuda_graphs, compile=compile, fp32_master=fp32_master,
            keep_best=keep_best, patience=patience, attention=attention, **method_options)
    device = frames.pixels.device
    start = time.perf_counter()
    autograd = torch.inference_mode(False) if plan.method == "grad" else contextlib.nullcontext()
    with PeakMemory(device, enabled=measure_memory) as peak, attention_backend(adapter.module, attention), \
            eval_mode(adapter.module), autograd:
        plan, first_steps, second_steps = _first_frames_apart(adapter, frames, plan, progress)
        iteration = make_iteration(adapter, frames, plan)
        watch = None if callback is None else (lambda k: callback(k, shaped(frames, iteration.latents)))
        with torch.no_grad():  # the capture's warm-up steps, as every step, without autograd (cuda_graphs: not grad)
            step = GraphedStep(iteration) if cuda_graphs else iteration.run_step
        steps_run = _run(iteration, step, plan, progress, watch)
        latents, returned = iteration.finish(steps_run)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    result = build_result(iteration, frames, latents, returned, steps_run, seconds, peak.peak_bytes, plan)
    result.first_frame_steps, result.second_frame_steps = first_steps, second_steps
    return result


def _first_frames_apart(adapter: VaeAdapter, frames: Frames, plan: Plan,
                        progress: bool) -> tuple[Plan, torch.Tensor | None, int | None]:
    """With ``first_frame_steps`` or ``second_frame_steps`` where they run (``decinv_fast.first_frame``): the
    videos' first frames inverted alone, their first two latent frames' frames from ``E(x)``, and the whole run's
    plan starting there with its cap lowered; else the plan as it is. -> ``(plan, (B,) steps each first frame
    took, or None, the second run's steps, or None)``."""
    apart = first_frame.plan_apart(adapter, frames, plan)
    if apart is None:
        return plan, None, None
    start, took = None, None
    if apart.k:
        start, took = _apart(adapter, first_frame.leading_frames(frames, 1), apart.first, progress,
                             f"first frames alone (first_frame_steps={apart.k}", "pass keep_best=True", plan)
    if apart.s:
        pair, _ = _apart(adapter, first_frame.leading_frames(frames, apart.second), apart.pair, progress,
                         f"first {apart.second} frames alone (second_frame_steps={apart.s}",
                         "set second_frame_steps=0", plan)
        start = pair if start is None else torch.cat([start, pair[:, :, 1:]], dim=2)
    return dataclasses.replace(apart.whole, start=start, join=first_frame.joins_at(plan)), took, apart.s or None


def _apart(adapter: VaeAdapter, frames: Frames, plan: Plan, progress: bool, what: str, fix: str,
           whole: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """A run on the videos' first frames (``decinv_fast.first_frame``) -> ``(latents, (B,) steps each video took)``;
    its buffers go with it. A non-finite result is an error naming ``what`` it ran on, with its option, and a
    ``fix``."""
    iteration = make_iteration(adapter, frames, plan)
    steps_run = _run(iteration, iteration.run_step, plan, progress, None)
    latents, _ = iteration.finish(steps_run)
    if not bool(torch.isfinite(latents).all()):
        raise FloatingPointError(f"inversion diverged on the videos' {what}, method={whole.label!r}): try a smaller "
                                 f"lr, or {fix}")
    tracker = iteration.tracker
    return latents, torch.full((frames.batch,), steps_run) if tracker is None else tracker.stop_step.cpu()


def _run(iteration, step, plan: Plan, progress: bool, watch) -> int:
    """Step until ``plan.steps``, or until every sample stopped (tracker) or, without ``keep_best``,
    something diverged (with it, a sample that diverges stops on its own and the others run on)."""
    bar = tqdm(total=plan.steps, desc=f"decinv {plan.label}", disable=not progress, leave=False)
    denom = iteration.residual_norm
    tracker = iteration.tracker
    sync = progress or (tracker is not None and tracker.needs_sync)
    with bar, torch.set_grad_enabled(plan.method == "grad"):
        for k in range(plan.steps):
            if plan.start is not None and k == plan.join > 0:  # first_frame_join: after k steps from E(x)
                iteration.join_first_frame(plan.start)
            step()
            if k == 0:
                check_first_evaluation(iteration)
            if watch is not None:
                watch(k)
            if not sync:
                continue
            rel = iteration.history[k].sqrt() / denom
            if tracker is not None:  # a sample that stopped before step k no longer counts
                rel = torch.where(_ran(tracker.stop_step, k), rel, torch.zeros_like(rel))
            bar.set_postfix(residual=f"{float(rel.max()):.3e}")
            bar.update(1)
            if not plan.keep_best and not bool(torch.isfinite(rel).all()):
                return k + 1
            if tracker is not None and tracker.needs_sync and not bool(tracker.active.any()):
                return k + 1
    return plan.steps


def _ran(stop_step: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each sample was still running at step ``k``: ``stop_step`` is -1 while it runs, else
    the number of steps after which it stopped."""
    return (stop_step < 0) | (k < stop_step)


@torch.no_grad()
def encode(vae, images, *, dtype: torch.dtype | None = None, chunk_frames: int | str | None = None) -> torch.Tensor:
    """The encoder-only latent ``E(x)`` that ``invert`` improves on (same space and shapes).
    ``chunk_frames``: frames per encoder call, as for :func:`invert` (``None``: all at once)."""
    check_dtype(dtype)
    adapter = _working_vae(vae, as_adapter(vae), dtype)
    frames = _frames_for(adapter, images, dtype)
    chunk = _chunk_for(adapter, frames, chunk_frames, "fsm", {})
    with eval_mode(adapter.module):
        return shaped(frames, encode_frames(adapter, frames.pixels, chunk))


@torch.no_grad()
def decode(vae, latents: torch.Tensor, *, chunk_frames: int | None = None) -> torch.Tensor:
    """``D(z)``: pixels in [-1, 1] (unclamped), ``(B, 3, H, W)`` or ``(B, F, 3, H, W)``; a video VAE's
    ``(B, C, f, h, w)`` latents decode to ``(B, F, 3, H, W)`` videos, the layout :func:`invert` takes.
    ``chunk_frames``: frames per decoder call (``None``: all at once; whole videos for temporal and video
    VAEs): a long video's peak is one chunk's decoder activations, not the whole video's."""
    if chunk_frames is not None and (not is_int(chunk_frames) or chunk_frames < 1):
        raise ValueError(f"chunk_frames must be a positive int or None (frames per decoder call), got {chunk_frames!r}")
    adapter = _one_weight_dtype(as_adapter(vae))
    videos = adapter.encodes_videos
    check_latents(latents, adapter)
    squeezed = latents.dim() == (4 if videos else 3)  # one image's (C, h, w) or one video's (C, f, h, w)
    z = latents[None] if squeezed else latents
    if adapter.dtype is not None:
        z = z.to(adapter.dtype)
    if videos:  # one row per video; its decoder gives 1 + (f - 1) t frames
        flat, fpv = z, 1
        layout = Frames(z, z.shape[0], 1 + (z.shape[2] - 1) * adapter.temporal_compression, squeezed, videos=True)
    else:
        frames = z.shape[1] if z.dim() == 5 else 1
        flat = z.flatten(0, 1) if z.dim() == 5 else z
        layout = Frames(flat, z.shape[0], frames if z.dim() == 5 else None, squeezed)  # for the chunk checks
        fpv = frames if adapter.temporal else 1
    chunk = _chunk_for(adapter, layout, chunk_frames, "fsm", {})
    with eval_mode(adapter.module):
        parts = [adapter.decode(flat[s], fpv) for s in chunks(flat.shape[0], chunk)]
    pixels = torch.cat(parts) if len(parts) > 1 else parts[0]
    check_output_finite("decoder's output", adapter, pixels)
    if videos:
        pixels = pixels.transpose(1, 2).contiguous()  # (B, 3, F, H, W) -> (B, F, 3, H, W)
    else:
        pixels = pixels.reshape(z.shape[:-3] + pixels.shape[1:])
    return pixels[0] if squeezed else pixels
