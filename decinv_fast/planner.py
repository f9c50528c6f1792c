"""Memory planner: predict the peak memory of an inversion from shapes alone, and pick a chunk.

The VAE is rebuilt on the ``meta`` device (no weights, no compute) and one encoder/decoder pass of
a chunk of frames is traced under a dispatch mode that adds up the bytes of every tensor the pass
creates and subtracts them when the tensor dies; the highest point is the chunk's transient peak.
Attention is modelled as the kernel that would run: ``sdpa`` and ``xformers`` keep no
tokens x tokens matrix (flash / memory-efficient kernels), ``math`` materialises it, and ``auto``
runs the VAE's own processors as the run keeps them (``attention.auto_processors``): the meta copy
gets copies of them, so one that calls SDPA counts as a fused kernel and one that computes
softmax(QK^T)V itself (a subclass of diffusers' ``AttnProcessor``) is traced building the matrix.
An SDPA call that no fused kernel of the device accepts (PyTorch's gates, ``sdpa_rules``: e.g. Cosmos'
attention, whose query has a strided head dim) is traced as PyTorch's math kernel, as it runs.
The gradient-based baseline is traced forward *and* backward, so the activations autograd keeps count.
The pass traced is ``E(D(z))`` with the pixel residual ``D(z) - x`` the iteration holds through the
encoder; its other pixel-sized temporaries (``residual_blur``'s filtered copy) are smaller than the
decoder's own peak, which they follow, and are not traced (checked with ``residual_blur`` in
tests/test_planner.py). The iteration's state (latent-sized buffers, optimizer history, the fp32
master copy fp16 runs keep) is counted from the method, its options and ``fp32_master``, as the run
allocates it.

A video VAE that compresses time (Wan, CogVideoX, HunyuanVideo, LTX-Video, ...) encodes whole videos, so
its chunks are whole videos: ``c`` of them are traced as ``(c, 3, F, H, W)`` pixels and
``(c, C, 1 + (F - 1) / t, h, w)`` latents through the adapter's own ``encode``/``decode`` (Wan's
per-call feature cache included: it is freed when each call ends), and the state is counted from
those latents; ``per_chunk`` is keyed by frames, ``c * F``. The meta copy keeps the switches set
after construction (``enable_tiling()``, frame batches), so a tiled VAE is planned tiled.

It predicts what the allocator hands out (the quantity ``torch.cuda.max_memory_allocated`` reports),
not the CUDA context. It adds what each convolution holds besides its output (``memory_trace.LiveBytes``):
on the CPU oneDNN's layout copies or the column buffers of PyTorch's native kernels, checked against the
CPU allocator's measured peak (tests/test_planner.py, tests/test_planner_video.py); on CUDA cuDNN's
workspace, the input and output again, checked once on an H100 (benchmarks/gpu_validation.py: the SD-2.1
layout in fp16 within 0.85-1.07x of the measured peak, the released video VAEs in bf16 within 0.84-1.18x;
large chunks are over-predicted, the safe side for ``chunk_frames="auto"``). It predicts a process's first
call: cuDNN picks its algorithms at first use, and later calls can peak lower (HunyuanVideo untiled: about
10 GiB). Allocator rounding is not modelled.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .adapters import as_adapter
from .attention import check_attention
from .inputs import check_latent_size, check_video_frames
from .memory import available_ram, cuda_obtainable
from .memory_trace import STANDARD_ONE, chunk_pass, meta_vae, own_processor_names, peak_bytes
from .options import (
    AUTO,
    OPTION_DEFAULTS,
    check_dtype,
    check_fp32_master,
    check_int,
    check_options,
    keeps_fp32_master,
    math_dtype,
    option,
)

# latent-sized buffers held by the iteration, in the latents' dtype; Anderson adds 2m + 2 fp32 ones
GRADIENT_FREE_STATE = {"adam": 6, "fsm": 3, "km": 4, "anderson": 3}
PLANNED_METHODS = (*GRADIENT_FREE_STATE, "grad")


@dataclass
class MemoryPlan:
    """Predicted peak bytes of an inversion, per chunk size.

    ``per_chunk[c]`` is the whole predicted peak with ``c`` frames per encoder/decoder call (whole videos,
    multiples of ``F``, for a temporal VAE or a video VAE):
    weights + input pixels + the iteration's state + the transient peak of one chunk.
    ``added_per_chunk[c]`` leaves out weights and input (what the call itself allocates).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    method: str
    weights_bytes: int
    input_bytes: int
    state_bytes: int
    transient: dict[int, int]
    budget_bytes: int | None = None
    per_chunk: dict[int, int] = field(default_factory=dict)
    added_per_chunk: dict[int, int] = field(default_factory=dict)
    chunk: int | None = None  # the largest chunk whose prediction fits the budget

    def __post_init__(self):
        for c, t in self.transient.items():
            self.added_per_chunk[c] = self.state_bytes + t
            self.per_chunk[c] = self.weights_bytes + self.input_bytes + self.state_bytes + t
        if self.budget_bytes is not None:
            fitting = [c for c, p in self.per_chunk.items() if p <= self.budget_bytes]
            self.chunk = max(fitting) if fitting else None


def _candidate_chunks(frames: int, group: int) -> list[int]:
    sizes, c = set(), group
    while c < frames:
        sizes.add(c)
        c *= 2
    sizes.add(frames)
    return sorted(s for s in sizes if s % group == 0)


def plan(vae, shape, *, dtype: torch.dtype | None = None, device: str = "cuda", budget_bytes: int | None = None,
         method: str = "adam", attention: str = "auto", chunks: list[int] | None = None,
         memory: int | None = None, mixing: str | None = None, optimizer: str | None = None,
         fp32_master: bool | None = None) -> MemoryPlan:
    """Predict peak memory of ``invert(vae, images_of(shape), method=method, dtype=dtype)`` per chunk size.

    Args:
        vae: a diffusers VAE (its config is used; its weights are not touched).
        shape: pixel shape ``(B, 3, H, W)`` or ``(B, F, 3, H, W)`` (4 channels for Qwen-Image 2.1's RGBA
            VAE); for a video VAE (Wan, CogVideoX, HunyuanVideo, LTX-Video, ...) ``F`` is ``1 + k * frame_step``
            as ``invert`` takes it, and each chunk is whole videos traced as the VAE takes them,
            ``(c, 3, F, H, W)`` to ``(c, C, f, h, w)`` latents.
        dtype: the run's dtype, as ``invert``'s ``dtype`` (``None``, the default: the VAE's own, the
            dtype ``invert`` runs it in; an fp32 VAE you will run in fp16, pass ``torch.float16``):
            weights, pixels, latents and activations are counted in it (Anderson's and L-BFGS's history
            in fp32, fp64 for fp64).
        device: the device the prediction is for (``"cuda"``, ``"cuda:N"``, an index or ``"cpu"``; the plan
            keeps its name); ``"cpu"`` adds oneDNN's per-convolution layout copy (see the module docstring).
        budget_bytes: if given, ``plan.chunk`` is the largest chunk predicted to fit.
        method: ``"adam"``, ``"fsm"``, ``"km"``, ``"anderson"``, ``"auto"`` (planned as the Anderson
            run it is, ``options.AUTO``) or ``"grad"`` (traced forward and backward).
        attention: ``"sdpa"``/``"xformers"`` (fused kernels), ``"math"`` (the tokens x tokens matrix) or
            ``"auto"``: the VAE's own processors as the run keeps them (its plain ``AttnProcessor`` becomes
            SDPA), traced as they compute (a custom processor that does not call SDPA builds the matrix).
            An SDPA call whose inputs no fused kernel on ``device`` accepts is traced as the math kernel.
        chunks: chunk sizes in frames to evaluate (default: powers of two up to the frame count, and it;
            for videos that must stay whole, ``F`` times powers of two).
        memory: Anderson's history length ``m`` (its mixer holds ``2m + 2`` fp32 latents, fp64 for
            fp64 latents), or the number of L-BFGS pairs for grad's ``optimizer="lbfgs"``; default 5.
        mixing: Anderson's ``"latent"`` (default) or ``"pixel"`` mixing (the latter adds ``m + 2``
            fp32 images, fp64 for fp64). ``method="auto"`` sets both itself.
        optimizer: grad's ``"adam"`` (default: ``z``, its gradient, Adam's two moments) or ``"lbfgs"``
            (``z`` and its gradient, then ``2 memory + 4`` fp32 latents: the accepted point, its
            gradient, the direction, the best point and the pairs; fp64 for fp64 latents).
        fp32_master: as ``invert``'s: a gradient-free run with fp16 or bf16 latents keeps a fp32 master
            copy of its iterate (``None``, the default: with fp16 only), counted in the state.
    """
    run_method, memory, mixing, optimizer = _planned_method(method, memory, mixing, optimizer)
    adapter = as_adapter(vae)
    if adapter.module is None:
        raise TypeError("plan needs a diffusers VAE (its config defines the layers); got callables")
    dtype = adapter.dtype if dtype is None else dtype
    channels = adapter.image_channels or 3
    shape = _checked_shape(shape, adapter.spatial_factor, channels)
    check_latent_size(*shape[-2:], adapter, "shape")
    per_row = _frames_per_row(adapter, shape)
    if isinstance(chunks, Iterator):  # read once: a generator would be spent by the checks
        chunks = list(chunks)
    device = _check_arguments(dtype, device, budget_bytes, attention, chunks)
    chunks = None if chunks is None else [int(c) for c in chunks]  # a NumPy array has no truth value
    check_fp32_master(fp32_master, run_method)
    method_label, method = method, run_method
    frames = shape[0] * (shape[1] if len(shape) == 5 else 1)
    per_video = shape[1] if len(shape) == 5 and (adapter.temporal or adapter.encodes_videos) else 1
    meta = as_adapter(meta_vae(adapter.module, dtype, attention))
    h, w = shape[-2:]
    f = adapter.spatial_factor
    pixel, latent = (channels, h, w), (adapter.latent_channels, h // f, w // f)
    if adapter.encodes_videos:  # a row is a whole video: (3, F, H, W) pixels, (C, 1 + (F - 1) / t, h, w) latents
        pixel = (channels, per_row, h, w)
        latent = (latent[0], 1 + (per_row - 1) // adapter.temporal_compression, *latent[1:])
    rows = frames // per_row
    size = torch.tensor([], dtype=dtype).element_size()
    latent_bytes = rows * math.prod(latent) * size
    weights = sum(p.numel() for p in adapter.module.parameters()) * size
    transient = {}
    for c in chunks or ():
        if c > frames or c % per_video:
            raise ValueError(f"chunks: {c} frames per call is not possible for {frames} frame(s)"
                             + (f" in videos of {per_video}" if per_video > 1 else "") + "; a chunk holds at most all "
                             "frames" + (", in whole videos" if per_video > 1 else ""))
    for c in chunks or _candidate_chunks(frames, per_video):
        try:
            transient[c] = peak_bytes(chunk_pass(meta, c // per_row, pixel, latent, dtype, per_video, method),
                                      attention, device)
        except Exception as error:
            own = own_processor_names(adapter.module) if attention == "auto" else ""
            if not own:
                raise
            raise ValueError(f"attention='auto' plans with the VAE's own attention processors ({own}), which failed "
                             f"on the meta device, where the trace runs ({type(error).__name__}: {error}); "
                             f"{STANDARD_ONE}") from error
    math_size = math_dtype(dtype).itemsize  # the update math of anderson and L-BFGS
    if method == "grad" and optimizer == "lbfgs":
        state = latent_bytes * 2 + (latent_bytes // size) * math_size * (2 * memory + 4)
    elif method == "grad":
        state = latent_bytes * 4  # z, its gradient, Adam's m and v
    else:
        state = latent_bytes * GRADIENT_FREE_STATE[method] + rows * 4 * 64  # + norms/history (small)
        if method == "anderson":
            state += (latent_bytes // size) * math_size * (2 * memory + 2)
            if mixing == "pixel":
                state += frames * channels * h * w * math_size * (memory + 2)
        if keeps_fp32_master(dtype, fp32_master):  # loop.GradientFreeIteration's master, y.float()
            state += (latent_bytes // size) * 4
    return MemoryPlan(shape, dtype, device, method_label, weights, frames * channels * h * w * size, state, transient,
                      budget_bytes)


def _frames_per_row(adapter, shape: tuple[int, ...]) -> int:
    """Frames per row of the run's pixels: 1, or a whole video for a VAE that encodes videos, whose frame
    count is refused as ``invert`` refuses it (``inputs.check_video_frames``)."""
    if not adapter.encodes_videos:
        return 1
    count = shape[1] if len(shape) == 5 else 1
    check_video_frames(count, adapter.frame_step, adapter.kind, "shape")
    return count


def _planned_method(method: str, memory: int | None, mixing: str | None,
                    optimizer: str | None) -> tuple[str, int, str, str]:
    """The method whose memory is traced, with its ``memory``, ``mixing`` and ``optimizer`` filled in;
    an option the method does not take is refused, and the values are checked as ``invert`` checks them."""
    if optimizer is not None and method != "grad":
        raise ValueError(f"optimizer is an option of method='grad', got method={method!r}")
    if method == "auto":
        if memory is not None or mixing is not None:
            raise ValueError("method='auto' sets its own Anderson memory and mixing; use method='anderson' to set them")
        return AUTO["method"], AUTO["options"]["memory"], AUTO["options"]["mixing"], OPTION_DEFAULTS["optimizer"]
    if method not in PLANNED_METHODS:
        raise ValueError(f"method must be one of {(*PLANNED_METHODS, 'auto')}, got {method!r}")
    if memory is not None and method != "anderson" and not (method == "grad" and optimizer == "lbfgs"):
        raise ValueError(f"memory is an option of method='anderson' and of grad's optimizer='lbfgs', not of "
                         f"method={method!r}" + (" with Adam" if method == "grad" else ""))
    if mixing is not None and method != "anderson":
        raise ValueError(f"mixing is an option of method='anderson', not of method={method!r}")
    given = {k: v for k, v in (("memory", memory), ("mixing", mixing), ("optimizer", optimizer)) if v is not None}
    _, options = check_options(method, None, given)
    return method, option(options, "memory"), option(options, "mixing"), option(options, "optimizer")


def _checked_shape(shape, factor: int, channels: int) -> tuple[int, ...]:
    """``shape`` as ints, refused as ``invert`` would refuse images of that shape (``channels``: 3, or 4 for
    an RGBA VAE)."""
    try:  # ints of any kind (torch.Size, NumPy), not floats or bools
        dims = tuple(operator.index(d) for d in shape if not isinstance(d, bool))
    except TypeError:
        dims = ()
    if len(dims) not in (4, 5) or len(dims) != len(shape) or min(dims) < 1 or dims[-3] != channels:
        raise ValueError(f"shape must be (B, {channels}, H, W) or (B, F, {channels}, H, W) of positive ints"
                         f"{' (this VAE takes RGBA images)' if channels == 4 else ''}, got {shape!r}")
    h, w = dims[-2:]
    if h % factor or w % factor:
        raise ValueError(f"shape: height {h} and width {w} must be multiples of {factor} (the VAE's downsampling "
                         "factor)")
    return dims


def _check_arguments(dtype, device, budget_bytes, attention, chunks) -> str:
    """Refuse bad arguments; returns ``device`` as its name (``0`` is ``"cuda:0"``)."""
    check_dtype(dtype)
    try:
        named = torch.device(device)
    except (RuntimeError, TypeError):
        named = None
    if named is None or named.type not in ("cuda", "cpu"):  # the rules model these two only
        raise ValueError(f"device must be a CUDA device or 'cpu' (a name, index or torch.device), got {device!r}")
    if budget_bytes is not None:
        check_int("budget_bytes", budget_bytes, 1)
    check_attention(attention)
    if chunks is not None:
        if isinstance(chunks, int | str) or not list(chunks):
            raise ValueError(f"chunks must be a non-empty list of chunk sizes, got {chunks!r}")
        for c in chunks:
            check_int("chunks[...] (frames per encoder/decoder call)", c, 1)
    return str(named)


def auto_chunk(adapter, frames, method: str, options: dict, attention: str = "auto",
               fp32_master: bool | None = None) -> int:
    """The largest chunk, in frames, predicted to fit in the memory free now (:func:`chunk_within`).
    Whole videos for temporal VAEs and video VAEs (at least one).
    ``options`` are the run's method options (``memory``, ``mixing``, ``optimizer``), ``attention``
    its attention backend (``"math"`` builds the tokens x tokens matrix) and ``fp32_master`` its master
    copy setting."""
    if adapter.module is None:
        raise ValueError("chunk_frames='auto' needs a diffusers VAE to plan with; give an int for callables")
    pixels = frames.pixels
    image = pixels.shape[1:2] + pixels.shape[-2:]  # (C, H, W), also of whole videos' (B, C, F, H, W) rows
    shape = (frames.batch, frames.frames, *image) if frames.frames else (frames.batch, *image)
    device = pixels.device
    own = {}  # the options plan() takes for this method, as the run has them
    if method == "anderson":
        own = {"memory": option(options, "memory"), "mixing": option(options, "mixing")}
    elif method == "grad":
        own = {"optimizer": option(options, "optimizer")}
        if own["optimizer"] == "lbfgs":
            own["memory"] = option(options, "memory")
    result = plan(adapter.module, shape, dtype=pixels.dtype, device=device.type, method=method,
                  attention=attention, fp32_master=fp32_master, **own)
    return chunk_within(result, device)


def chunk_within(result: MemoryPlan, device: torch.device) -> int:
    """The largest of ``result``'s chunks predicted to fit in what ``device`` has free now, else the smallest.
    On CUDA what the call allocates (``added_per_chunk``; the weights and input are there already, beside
    whatever else the process holds: another model's memory is not free) within 90% of what the process can
    still get; on the CPU the whole prediction within half of the available RAM."""
    if device.type == "cuda":
        predicted, budget = result.added_per_chunk, cuda_obtainable(device)
    else:
        predicted, budget = result.per_chunk, available_ram() // 2
    return max((c for c, p in predicted.items() if p <= budget), default=min(predicted))
