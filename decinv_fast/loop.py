"""The inversion loop: static buffers, E(D(.)) per chunk of frames, one fused update per step.

Everything a step needs lives in preallocated device tensors, including the step counter and a
per-step table of step sizes and Adam bias corrections, so one step is a fixed sequence of kernel
launches with no host sync and no Python value that changes between steps: exactly what a CUDA
graph captures, and what the CPU runs eagerly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import reference
from .adapters import VaeAdapter, check_output_finite
from .clipping import clipped_decoding
from .filters import ResidualBlur
from .inputs import Frames
from .memory import available_ram
from .ops import adam_residual_step, fsm_residual_step, km_residual_step
from .options import keeps_fp32_master, math_dtype, option, uses_torch_update
from .tracking import Tracker


@dataclass(frozen=True)
class Plan:
    """How a run is laid out: which method, how many steps, how frames are grouped."""

    method: str
    steps: int
    lr: float
    schedule: str
    options: dict
    backend: str
    chunk: int  # frames per encoder/decoder call
    master: bool | None = None  # fp32 master copy of z with fp16/bf16 latents; None: with fp16 only
    keep_best: bool = False  # return each sample's best evaluated point (lowest pixel error)
    tol: float | None = None  # per-sample stop: relative latent residual below tol
    patience: int | None = None  # per-sample stop: pixel error not improved for this many steps
    compile: bool | str = False  # torch.compile the decoder + encoder pass (True, or a backend name)
    named: str | None = None  # the method the caller named, where it differs ("auto" runs anderson)
    start: torch.Tensor | None = None  # the first latent frame(s) solved apart (first_frame.py), taken at step join
    join: int = 0  # the step whose point takes ``start`` as its first latent frames (0: the run starts there)

    @property
    def label(self) -> str:
        """The method as the caller named it, for messages and the result."""
        return self.named or self.method


def chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def encode_frames(adapter: VaeAdapter, pixels: torch.Tensor, chunk: int) -> torch.Tensor:
    """``E(x)`` of every frame, ``chunk`` frames per encoder call, in a buffer of its own: an encoder
    that returns a reused output buffer (a CUDA-graphed callable) would overwrite a kept reference."""
    parts = [adapter.encode(pixels[s]) for s in chunks(pixels.shape[0], chunk)]
    e_x = torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].clone(memory_format=torch.contiguous_format)
    check_output_finite("encoder's own output E(x)", adapter, e_x)  # before any step is spent on it
    return e_x


def sample_norm(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-sample ``||t||`` in fp32 of a frame-major buffer holding ``batch`` samples: the denominator
    of relative errors, so 1 where ``t`` is all zero (a uniform mid-grey image: the error is then
    absolute instead of infinite)."""
    norm = t.float().reshape(batch, -1).square().sum(1).sqrt()
    return torch.where(norm > 0, norm, torch.ones_like(norm))


def make_tracker(plan: Plan, y: torch.Tensor) -> Tracker | None:
    """The best-iterate / early-stop tracker over ``y`` (``(B, n)``), when the plan asks for one; with a first-frame
    join (``Plan.join``) no sample stops before the step that evaluates the joined point."""
    if not (plan.keep_best or plan.tol is not None or plan.patience is not None):
        return None
    earliest = plan.join if plan.start is not None else 0
    return Tracker(y, keep_best=plan.keep_best, tol=plan.tol, patience=plan.patience, earliest_stop=earliest)


def up_front_bytes(steps: int, method: str, schedule: str, batch: int, dtype: torch.dtype) -> int:
    """The peak of what a run of ``steps`` allocates before its first step, grown with ``steps``: the step table
    (a row a step: Adam's 3 values, else 1, in the update's dtype) beside, first, the schedule's Python list
    of rates (a slot a step; the cosine one a float and a row tuple of Python floats a step too) and then, per
    sample, the residual and pixel-error histories and the result's copy of one, in fp32. On the safe side:
    1.1-1.5x the growth of the process's peak RSS measured for 5-20 million steps (adam, auto, fsm; cosine)."""
    values = 3 if method == "adam" else 1
    python = 8 + (40 + 60 * values if schedule == "cosine" else 0)  # bytes, measured on CPython 3.11
    return steps * (values * math_dtype(dtype).itemsize + max(python, 3 * 4 * batch))


def check_steps_fit(steps: int, method: str, schedule: str, batch: int, device: torch.device,
                    dtype: torch.dtype) -> None:
    """A ValueError naming ``steps`` when :func:`up_front_bytes` exceeds the memory the device has (the machine's
    available RAM, a GPU's total), instead of a bare ``MemoryError`` after the encoder's first pass."""
    need = up_front_bytes(steps, method, schedule, batch, dtype)
    cuda = device.type == "cuda"
    have = torch.cuda.mem_get_info(device)[1] if cuda else available_ram()
    if need > have:
        raise ValueError(f"steps={steps}: a run allocates its per-step table and (steps, batch) histories up front, "
                         f"{need / 2**30:.3g} GiB here, more than the {have / 2**30:.3g} GiB "
                         f"{'this GPU has' if cuda else 'of RAM available'}; pass fewer steps (tol and patience stop a "
                         "run before its last step)")


def step_table(plan: Plan, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Per-step values the update reads on the device: ``(lr_k, 1-b1^(k+1), 1-b2^(k+1))`` for Adam,
    ``(rho_k,)`` otherwise. Computed in double on the host, stored in the update math's dtype for
    latents of ``dtype``: fp32 (as the kernels see the reference's Python floats), fp64 for fp64
    latents (the torch backend then matches the reference's double arithmetic)."""
    rates = reference.lr_schedule(plan.steps, plan.lr, plan.schedule)
    betas = plan.options.get("betas", reference.ADAM_BETAS) if plan.method == "adam" else ()
    # every row from `last` on equals row `last`: only the rows up to it are worked out in Python
    flat = [reference.flat_from(plan.steps, plan.schedule), *(_bias_correction_flat_from(b, plan.steps) for b in betas)]
    last = min(plan.steps - 1, max(flat))
    rows = [(rates[k], *(1 - b ** (k + 1) for b in betas)) for k in range(last + 1)]
    table = torch.tensor(rows, dtype=math_dtype(dtype), device=device)
    return torch.cat([table, table[-1:].expand(plan.steps - 1 - last, -1)])


def _bias_correction_flat_from(beta: float, steps: int) -> int:
    """A step ``k`` from which Adam's ``1 - beta ** (k + 1)`` is 1.0 in double for every later step
    (``beta ** (k + 1)`` falls below half an ulp of 1), at most ``steps - 1``."""
    if beta == 0:
        return 0
    k = max(0, int(math.log(2.0 ** -53) / math.log(beta)) - 1)  # just before it gets there
    while k < steps - 1 and 1 - beta ** (k + 1) != 1.0:
        k += 1
    return min(k, steps - 1)


class GradientFreeIteration:
    """Buffers and one step of a gradient-free method (``adam``, ``fsm`` or ``km``)."""

    uses_master = True  # the fused update reads and writes a fp32 master copy when there is one

    def __init__(self, adapter: VaeAdapter, frames: Frames, plan: Plan):
        self.adapter, self.frames, self.plan = adapter, frames, plan
        pixels = frames.pixels
        self.e_x = encode_frames(adapter, pixels, plan.chunk)
        self.z = self.e_x.clone()
        if plan.start is not None and not plan.join:  # a video VAE's (B, C, f, h, w): its first latent frame(s)
            self.z[:, :, :plan.start.shape[2]] = plan.start
        self.y = self.z.clone() if plan.method == "km" else self.z  # where E(D(.)) is evaluated
        self.edz = torch.empty_like(self.z)
        self.x = pixels
        self.pixel_sq = torch.zeros(pixels.shape[0], dtype=torch.float32, device=pixels.device)
        # fp32 master copy of the iterate (of the evaluation point y for KM, see km_residual_step);
        # by default with fp16 only, where the official Adam's second moment underflows (api.invert)
        keeps = self.uses_master and keeps_fp32_master(self.z.dtype, plan.master)
        self.master = self.y.float() if keeps else None
        keeps_residual = self.keeps_pixel_residual(plan)
        # D(y) - x in fp32 (fp64 for fp64 pixels), for methods that mix by it (the codec then returns it)
        self.residual = torch.zeros(pixels.shape, dtype=math_dtype(pixels.dtype), device=pixels.device) \
            if keeps_residual else None
        fpv = frames.frames_per_video if adapter.temporal else 1
        self.codec = make_codec(adapter, fpv, plan.compile, residual=keeps_residual,
                                blur=option(plan.options, "residual_blur"),
                                clip_aware=option(plan.options, "clip_aware"))
        if plan.method == "adam":
            self.m = torch.zeros_like(self.z)
            self.v = torch.zeros_like(self.z)
            self.eps = plan.options.get("eps", reference.adam_eps(self.z.dtype))
            self.betas = plan.options.get("betas", reference.ADAM_BETAS)
        device = self.z.device
        self.table = step_table(plan, device, self.z.dtype)
        self.step = torch.zeros(1, dtype=torch.int64, device=device)
        self.sq_norm = torch.zeros(frames.batch, dtype=torch.float32, device=device)
        self.history = torch.zeros(plan.steps, frames.batch, dtype=torch.float32, device=device)
        self.pixel_history = torch.zeros_like(self.history)
        self.residual_norm = sample_norm(self.e_x, frames.batch)  # ||E(x)||: the residuals' denominator
        self.pixel_norm = sample_norm(pixels, frames.batch)
        self.tracker = make_tracker(plan, self.per_sample(self.y))

    def keeps_pixel_residual(self, plan: Plan) -> bool:
        """Whether the update needs ``D(y) - x`` itself (not only its norm)."""
        return False

    def join_first_frame(self, start: torch.Tensor) -> None:
        """The next point to evaluate takes ``start`` as its first latent frame(s) (``Plan.join``, between steps)."""
        for t in (self.z, self.y, self.master):
            if t is not None:
                t[:, :, :start.shape[2]] = start

    def per_sample(self, t: torch.Tensor) -> torch.Tensor:
        """View of a frame-major latent buffer as ``(B, elements per sample)``."""
        return t.view(self.frames.batch, -1)

    def evaluate(self) -> None:
        """``edz = E(D(y))`` and the pixel error ``||D(y) - x||²`` per frame (and ``D(y) - x`` where
        the method keeps it), ``chunk`` frames at a time, into preallocated buffers; the pixel error
        is recorded per sample."""
        for s in chunks(self.y.shape[0], self.plan.chunk):
            edz, pixel_sq, *residual = self.codec(self.y[s], self.x[s])
            self.edz[s].copy_(edz)
            self.pixel_sq[s] = pixel_sq
            if residual:
                self.residual[s].copy_(residual[0])
        self.pixel_history.index_copy_(0, self.step, self.per_sample(self.pixel_sq).sum(1).view(1, -1))

    def observe(self) -> None:
        """Feed the best-iterate / early-stop tracker (before the update changes ``y``)."""
        p = self.per_sample
        rel = None  # the relative latent residual, needed only to stop at tol
        if self.tracker.tol is not None:
            rel = (p(self.edz).float() - p(self.e_x).float()).square().sum(1).sqrt() / self.residual_norm
        pixel = self.pixel_history.index_select(0, self.step)[0]
        self.tracker.observe(self.step, p(self.y), pixel, rel)

    def update(self) -> None:
        """The fused update on the whole latent, then record the norms and advance the counter."""
        p = self.per_sample
        common = dict(backend=self.plan.backend, master=None if self.master is None else p(self.master))
        if self.plan.method == "adam":
            adam_residual_step(p(self.edz), p(self.e_x), p(self.z), p(self.m), p(self.v), self.sq_norm,
                               self.table, self.step, eps=self.eps, betas=self.betas, **common)
        elif self.plan.method == "fsm":
            fsm_residual_step(p(self.edz), p(self.e_x), p(self.z), self.sq_norm, self.table, self.step,
                              **common)
        else:
            km_residual_step(p(self.edz), p(self.e_x), p(self.y), p(self.z), self.sq_norm, self.table,
                             self.step, alpha=option(self.plan.options, "alpha"), **common)
        self.history.index_copy_(0, self.step, self.sq_norm.view(1, -1))
        self.step.add_(1)

    def run_step(self) -> None:
        self.evaluate()
        if self.tracker is not None:
            self.observe()
        self.update()

    def mutable_state(self) -> dict[str, torch.Tensor]:
        """Every buffer a step changes (``edz`` is scratch and needs no saving)."""
        names = ("z", "y", "m", "v", "master", "step", "sq_norm", "history", "pixel_history")
        state = {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}
        if self.tracker is not None:
            state.update({f"tracker.{n}": t for n, t in vars(self.tracker).items() if isinstance(t, torch.Tensor)})
        return state

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self.mutable_state().items()}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for n, t in self.mutable_state().items():
            t.copy_(saved[n])

    @property
    def latents(self) -> torch.Tensor:
        return self.z

    def finish(self, steps_run: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The latents to return (frame-major) and the step each sample's latent is from."""
        if self.tracker is None:
            return self.z, None
        latents, returned = self.tracker.finish(self.per_sample(self.z), steps_run)
        return latents.view_as(self.z), returned


def check_decoded_shape(adapter: VaeAdapter, decoded: torch.Tensor, x: torch.Tensor) -> None:
    """A decoding must have the images' shape (else ``D(z) - x`` would broadcast, or fail obscurely)."""
    if decoded.shape != x.shape:
        raise ValueError(f"the {adapter.kind} decoder returned shape {tuple(decoded.shape)} for images of shape "
                         f"{tuple(x.shape)}: it does not reproduce the images' size from their latents")


def pixel_error_backward(adapter: VaeAdapter, z: torch.Tensor, x: torch.Tensor, chunk: int, frames_per_video: int,
                         clip_aware: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Accumulate ``d/dz sum((D(z) - x)^2)`` into ``z.grad``, ``chunk`` frames per decoder call (the loss
    is a sum over frames, so the chunks' gradients add up to the whole one); ``D(z)`` clipped where
    ``x`` is with ``clip_aware``. Returns each frame's squared pixel error in ``dtype``."""
    sq = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
    for s in chunks(x.shape[0], chunk):
        decoded = adapter.decode(z[s], frames_per_video)
        check_decoded_shape(adapter, decoded, x[s])
        if clip_aware:
            decoded = clipped_decoding(decoded, x[s])
        diff = decoded - x[s]
        del decoded  # the backward pass does not need it: one pixel-sized tensor less at the peak
        diff.square().sum().backward(inputs=[z])  # z only: the user's VAE gets no .grad
        sq[s] = diff.detach().to(dtype).square().flatten(1).sum(1)
    return sq


class PixelErrorIteration:
    """What the gradient-based methods share: they start at ``E(x)`` and their residual *is* the pixel
    error ``||D(z) - x||`` (``history`` and ``pixel_history`` are one buffer), computed ``chunk`` frames
    at a time, clipped where ``x`` is with ``clip_aware``."""

    def _start(self, adapter: VaeAdapter, frames: Frames, plan: Plan) -> torch.Tensor:
        """Set the shared state and return ``E(x)``, the starting point."""
        self.adapter, self.frames, self.plan = adapter, frames, plan
        self.x = frames.pixels
        with torch.no_grad():
            e_x = encode_frames(adapter, self.x, plan.chunk)
        self.k = 0
        self.step = torch.zeros(1, dtype=torch.int64, device=e_x.device)
        self.history = torch.zeros(plan.steps, frames.batch, dtype=torch.float32, device=e_x.device)
        self.pixel_history = self.history
        self.pixel_norm = sample_norm(self.x, frames.batch)
        self.residual_norm = self.pixel_norm
        self.fpv = frames.frames_per_video if adapter.temporal else 1
        self.clip_aware = option(plan.options, "clip_aware")
        return e_x


class GradientBasedIteration(PixelErrorIteration):
    """The gradient-based baseline: Adam on ``sum((D(z) - x)^2)`` through the decoder (``D(z)``
    clipped where ``x`` is with ``clip_aware``, see :mod:`.clipping`).

    Frames are decoded and back-propagated ``chunk`` at a time; the loss is a sum over frames, so
    accumulating chunk gradients gives the same gradient with activations of one chunk alive.
    """

    def __init__(self, adapter: VaeAdapter, frames: Frames, plan: Plan):
        e_x = self._start(adapter, frames, plan)
        self.z = e_x.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.z], lr=plan.lr)
        self.rates = reference.lr_schedule(plan.steps, plan.lr, plan.schedule)
        self.sq_norm = torch.zeros(frames.batch, dtype=torch.float32, device=self.z.device)
        self.tracker = make_tracker(plan, self._flat())

    def _flat(self) -> torch.Tensor:
        return self.z.detach().view(self.frames.batch, -1)

    def run_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.rates[self.k]
        self.optimizer.zero_grad()
        sq = pixel_error_backward(self.adapter, self.z, self.x, self.plan.chunk, self.fpv, self.clip_aware)
        self.history[self.k] = sq.view(self.frames.batch, -1).sum(1)
        if self.tracker is not None:  # z_k's pixel error is known now, before the step moves z
            self.tracker.observe(self.step, self._flat(), self.history[self.k],
                                 self.history[self.k].sqrt() / self.residual_norm)
        self.optimizer.step()
        self.k += 1
        self.step += 1

    def finish(self, steps_run: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.tracker is None:
            return self.latents, None
        latents, returned = self.tracker.finish(self._flat(), steps_run)
        return latents.view_as(self.z), returned

    @property
    def latents(self) -> torch.Tensor:
        return self.z.detach()


def make_codec(adapter: VaeAdapter, frames_per_video: int, compile: bool | str, residual: bool = False,
               blur: float = 0.0, clip_aware: bool = False):
    """``(y, x) -> (E(D(y)), ||D(y) - x||² per frame in fp32)`` for one chunk, optionally through
    ``torch.compile`` (``True`` = inductor, a string = that ``torch.compile`` backend). With
    ``residual``, the pixel residual ``D(y) - x`` comes back as a third output. With ``blur > 0`` the
    encoder sees ``x + gaussian_blur(D(y) - x, blur)`` instead of ``D(y)`` (see :mod:`.filters`). With
    ``clip_aware`` ``D(y)`` is first clipped where ``x`` is (see :mod:`.clipping`)."""

    low_pass = ResidualBlur(blur) if blur else None

    def encode_decode(y: torch.Tensor, x: torch.Tensor):
        decoded = adapter.decode(y, frames_per_video)
        check_decoded_shape(adapter, decoded, x)
        if clip_aware:
            decoded = clipped_decoding(decoded, x)
        diff = torch.sub(decoded, x)
        encoder_input = decoded if low_pass is None else x + low_pass(diff)
        pixel_sq = squared_norms(diff, in_place=not residual)  # the encoder input is made already
        if residual:
            return adapter.encode(encoder_input), pixel_sq, diff
        return adapter.encode(encoder_input), pixel_sq

    if not compile:
        return encode_decode
    backend = "inductor" if compile is True else compile
    return torch.compile(encode_decode, dynamic=False, backend=backend)


def squared_norms(diff: torch.Tensor, in_place: bool) -> torch.Tensor:
    """``||diff||²`` per leading index, in fp32. In half precision the squares are taken in fp32 inside the
    reduction (a difference above 256 squares past fp16's 65504; no fp32 copy on a GPU); in fp32 ``diff``
    may be squared in place."""
    dims = tuple(range(1, diff.dim()))  # no view: compile-safe
    if diff.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(diff, dim=dims, dtype=torch.float32).square()
    squared = diff.square_() if in_place else diff.square()
    return squared.sum(dim=dims, dtype=torch.float32)


def make_iteration(adapter: VaeAdapter, frames: Frames, plan: Plan):
    if plan.method == "grad":
        if option(plan.options, "optimizer") == "lbfgs":
            from .lbfgs import LbfgsIteration

            return LbfgsIteration(adapter, frames, plan)
        return GradientBasedIteration(adapter, frames, plan)
    with torch.no_grad():
        if uses_torch_update(plan.method, plan.options):
            from .accelerated import AcceleratedIteration

            return AcceleratedIteration(adapter, frames, plan)
        return GradientFreeIteration(adapter, frames, plan)
