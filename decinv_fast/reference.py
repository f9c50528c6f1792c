"""The oracle: plain, readable PyTorch versions of every inversion method.

Faithful to the official code of Hong et al. (NeurIPS 2024, "Gradient-free decoder inversion in
latent diffusion models"): same initialisation, same order of tensor operations, same Adam
constants and learning-rate schedule. Tests and benchmarks import this module; fast paths are
proven against it and never copy it.

Every function works on any pair of callables

    encode(pixels) -> latents        E(x): pixels in [-1, 1] to the (scaled) latent space
    decode(latents) -> pixels        D(z): the way back

and keeps every tensor in the dtype of ``encode(images)`` (fp32 or fp16/bf16, as the official code
does: its fp16 path keeps z, m and v in fp16).

Notation: ``e_x = E(x)`` is computed once; ``T(z) = E(D(z)) - e_x`` is the residual used as a
pseudo-gradient; every method starts from ``z_0 = e_x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Codec = Callable[[torch.Tensor], torch.Tensor]

ADAM_BETAS = (0.9, 0.999)
SCHEDULES = ("paper", "constant", "cosine")


def adam_eps(dtype: torch.dtype) -> float:
    """Adam's epsilon in the official code: 1e-8 in fp32, 1e-4 in half precision."""
    return 1e-8 if dtype in (torch.float32, torch.float64) else 1e-4


def paper_lr(i: int, steps: int, lr: float) -> float:
    """Learning rate at 0-based step ``i`` of the official gradient-free schedule.

    ``N_cut = min(steps, 100)``, ``W = N_cut // 10``. For ``i < 0.8 * N_cut``: linear warmup
    ``lr * (i + 1) / W`` while ``i < W``, then ``lr * (1 + cos(pi * (i - W) / (N_cut - W))) / 2``.
    From ``0.8 * N_cut`` on, the rate stays at its last value (warmup 1/10, cosine 7/10, flat 2/10).
    """
    n_cut = min(steps, 100)
    warmup = n_cut // 10
    last = min(i, math.ceil(0.8 * n_cut) - 1)
    if last < warmup:
        return lr * (last + 1) / warmup
    return lr * (1 + math.cos(math.pi * (last - warmup) / (n_cut - warmup))) / 2


def cosine_lr(i: int, steps: int, lr: float) -> float:
    """Warmup (``steps // 10``) then cosine to zero: the official gradient-based schedule.

    The rate used at 0-based step ``i``, as ``transformers.get_cosine_schedule_with_warmup``
    gives it when the scheduler is stepped after each optimiser step.
    """
    warmup = steps // 10
    if i < warmup:
        return lr * i / max(1, warmup)
    progress = (i - warmup) / max(1, steps - warmup)
    return lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def flat_from(steps: int, schedule: str) -> int:
    """The first 0-based step from which the schedule's rate stays the same to the end (``steps - 1`` if it
    changes up to the last step): the paper's from the last step of its cosine, ``ceil(0.8 * min(steps, 100)) - 1``
    (:func:`paper_lr`), the constant one from 0."""
    if schedule == "paper":
        return min(steps, math.ceil(0.8 * min(steps, 100))) - 1
    return 0 if schedule == "constant" else steps - 1


def lr_schedule(steps: int, lr: float, schedule: str = "paper") -> list[float]:
    """The step size of every step: ``"paper"``, ``"constant"`` or ``"cosine"``. The paper's rate is worked
    out for the steps up to :func:`flat_from` and repeated after it, so a run of a million steps (stopped by
    ``tol``) does not compute it a million times."""
    if schedule == "paper":
        head = [paper_lr(i, steps, lr) for i in range(flat_from(steps, schedule) + 1)]
        return head + head[-1:] * (steps - len(head))
    if schedule == "constant":
        return [lr] * steps
    if schedule == "cosine":
        return [cosine_lr(i, steps, lr) for i in range(steps)]
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@dataclass
class ReferenceRun:
    """What a reference method returns: the final latent and the history of the run."""

    latents: torch.Tensor
    residuals: list[torch.Tensor] = field(default_factory=list)  # per step: (B,) relative residual
    iterates: list[torch.Tensor] = field(default_factory=list)  # z_1 .. z_N when record_iterates


def relative_residual(g: torch.Tensor, e_x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||g|| / ||e_x||`` (norms over all but the first dimension), in fp32."""
    dims = tuple(range(1, g.dim()))
    num = g.float().square().sum(dims).sqrt()
    return num / e_x.float().square().sum(dims).sqrt()


def _finish(run: ReferenceRun, z: torch.Tensor, g: torch.Tensor, e_x: torch.Tensor, record: bool) -> None:
    run.residuals.append(relative_residual(g, e_x))
    if record:
        run.iterates.append(z.clone())


def adam_update(z, m, v, g, k: int, lr_k: float, eps: float, betas=ADAM_BETAS):
    """One gradient-free Adam update at 0-based step ``k`` (the official code, op for op)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        z = z - lr_k * (m / (1 - b1**(k+1))) / (sqrt(v / (1 - b2**(k+1))) + eps)

    Returns the new ``(z, m, v)``.
    """
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g**2)
    m_hat = m / (1 - b1 ** (k + 1))
    v_hat = v / (1 - b2 ** (k + 1))
    z = z - lr_k * m_hat / (torch.sqrt(v_hat) + eps)
    return z, m, v


def fsm_update(z, g, rho_k: float):
    """Forward step: ``z - rho_k * g``."""
    return z - rho_k * g


def km_extrapolate(z, z_prev, alpha: float):
    """Inertial point ``y = z + alpha * (z - z_prev)``."""
    return z + alpha * (z - z_prev)


@torch.no_grad()
def adam(encode: Codec, decode: Codec, images: torch.Tensor, *, steps: int = 50, lr: float = 0.01,
         schedule: str = "paper", eps: float | None = None, betas=ADAM_BETAS,
         record_iterates: bool = False) -> ReferenceRun:
    """Gradient-free Adam (the paper's practical method): ``g = E(D(z)) - e_x`` fed to
    :func:`adam_update` with the step sizes of ``schedule``. ``eps`` defaults to
    :func:`adam_eps` of the latent dtype."""
    e_x = encode(images)
    eps = adam_eps(e_x.dtype) if eps is None else eps
    z = e_x.clone()
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    run = ReferenceRun(z)
    for k, lr_k in enumerate(lr_schedule(steps, lr, schedule)):
        g = encode(decode(z)) - e_x
        z, m, v = adam_update(z, m, v, g, k, lr_k, eps, betas)
        _finish(run, z, g, e_x, record_iterates)
    run.latents = z
    return run


@torch.no_grad()
def fsm(encode: Codec, decode: Codec, images: torch.Tensor, *, steps: int = 50, rho: float = 1.0,
        schedule: str = "constant", record_iterates: bool = False) -> ReferenceRun:
    """Forward step method: ``z_{k+1} = z_k - rho_k * T(z_k)`` (paper §3.2, fixed step ``rho``)."""
    e_x = encode(images)
    z = e_x.clone()
    run = ReferenceRun(z)
    for rho_k in lr_schedule(steps, rho, schedule):
        g = encode(decode(z)) - e_x
        z = fsm_update(z, g, rho_k)
        _finish(run, z, g, e_x, record_iterates)
    run.latents = z
    return run


@torch.no_grad()
def km(encode: Codec, decode: Codec, images: torch.Tensor, *, steps: int = 50, rho: float = 1.0,
       alpha: float = 0.5, schedule: str = "constant", record_iterates: bool = False) -> ReferenceRun:
    """Inertial Krasnoselskii-Mann iteration (paper §3.3)::

        y_k     = z_k + alpha * (z_k - z_{k-1})          (inertia alpha in [0, 1), z_{-1} = z_0)
        z_{k+1} = y_k - rho_k * T(y_k)

    This is the paper's relaxed step ``z_{k+1} = (1 - lambda) y_k + lambda (y_k - eta T(y_k))``
    with the relaxation ``lambda`` and the step ``eta`` folded into one step size
    ``rho = lambda * eta``. ``alpha = 0`` gives the forward step method. The residual recorded at
    step k is ``T(y_k)``, the one the update used.
    """
    e_x = encode(images)
    z = e_x.clone()
    z_prev = z.clone()
    run = ReferenceRun(z)
    for rho_k in lr_schedule(steps, rho, schedule):
        y = km_extrapolate(z, z_prev, alpha)
        g = encode(decode(y)) - e_x
        z_prev = z
        z = fsm_update(y, g, rho_k)
        _finish(run, z, g, e_x, record_iterates)
    run.latents = z
    return run


def gradient_based(encode: Codec, decode: Codec, images: torch.Tensor, *, steps: int = 50,
                   lr: float = 0.01, schedule: str = "constant",
                   record_iterates: bool = False) -> ReferenceRun:
    """The gradient-based baseline: ``min_z sum((D(z) - x)**2)`` with ``torch.optim.Adam``.

    ``z`` starts at ``E(x)``; the decoder is back-propagated every step (the memory and time cost
    the gradient-free methods avoid). ``schedule="cosine"`` is the official warmup + cosine-to-zero
    schedule; the official default is a fixed rate. The residual recorded is the relative pixel
    error ``||D(z_k) - x|| / ||x||``, which is what this method minimises.
    """
    with torch.no_grad():
        e_x = encode(images)
    z = e_x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    run = ReferenceRun(z)
    for lr_k in lr_schedule(steps, lr, schedule):
        for group in optimizer.param_groups:
            group["lr"] = lr_k
        x_pred = decode(z)
        loss = (x_pred - images).square().sum()
        optimizer.zero_grad()
        loss.backward(inputs=[z])  # z only, even if the decoder's weights require grad
        optimizer.step()
        with torch.no_grad():
            _finish(run, z.detach(), x_pred.detach() - images, images, record_iterates)
    run.latents = z.detach()
    return run


LBFGS_ARMIJO = 1e-4  # sufficient decrease: accept a trial when f_try <= f + c1 * t * <g, d>


def lbfgs_direction(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``-H g`` by the L-BFGS two-loop recursion over ``pairs`` ``[(s, y), ...]`` (oldest first), with
    ``H_0 = (<s, y> / <y, y>) I`` of the newest pair; ``-g`` without pairs."""
    q = g.clone()
    alphas = []
    for s, y in reversed(pairs):
        alpha = (s * q).sum() / (s * y).sum()
        q = q - alpha * y
        alphas.append(alpha)
    if pairs:
        s, y = pairs[-1]
        q = q * ((s * y).sum() / (y * y).sum())
    for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = (y * q).sum() / (s * y).sum()
        q = q + (alpha - beta) * s
    return -q


def gradient_based_lbfgs(encode: Codec, decode: Codec, images: torch.Tensor, *, steps: int = 50,
                         lr: float = 0.01, memory: int = 5) -> ReferenceRun:
    """``min_z sum((D(z) - x)**2)`` by L-BFGS with a backtracking line search, each sample on its own.

    One decoder forward + backward per step, at a trial point ``z + t d`` (the first at ``E(x)``).
    A trial is accepted when ``f_try <= f + c1 t <g, d>`` (Armijo; the first always is): ``z`` moves
    there, the pair ``(s, y) = (z_new - z, g_new - g)`` joins the last ``memory`` pairs if
    ``<s, y> > 0``, and the next trial is ``z + d`` with ``d = -H g`` (:func:`lbfgs_direction`, ``t = 1``).
    Without pairs, or when ``d`` is not a descent direction, the pairs are dropped and ``d = -g``
    with ``t = lr / max|g|``: no element moves more than ``lr``. A rejected trial (or a non-finite one)
    shrinks ``t`` to the minimum of the quadratic through ``f``, ``<g, d>`` and ``f_try``, kept in
    ``[0.1 t, 0.5 t]`` (``0.1 t`` if non-finite). The latents returned are the accepted points; the
    residual recorded at each step is the accepted point's ``||D(z) - x|| / ||x||`` (``||D(z) - x||``
    for an all-zero image).
    """
    with torch.no_grad():
        e_x = encode(images)
    norms = images.flatten(1).to(e_x.dtype).square().sum(1).sqrt()
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))  # all-zero image: absolute errors
    rows, finals = [], []
    for b in range(images.shape[0]):
        x = images[b:b + 1]
        z, f, g, pairs = e_x[b:b + 1].clone(), math.inf, None, []
        trial, d, t = z, None, 0.0
        row = []
        for _ in range(steps):
            point = trial.detach().requires_grad_(True)
            loss = (decode(point) - x).square().sum()
            (g_try,) = torch.autograd.grad(loss, point)
            f_try, point = float(loss.detach()), point.detach()
            finite = math.isfinite(f_try) and bool(torch.isfinite(g_try).all())
            slope = 0.0 if d is None else float((g * d).sum())
            if finite and f_try <= f + LBFGS_ARMIJO * t * slope:
                if g is not None and float(((point - z) * (g_try - g)).sum()) > 0:
                    pairs = (pairs + [(point - z, g_try - g)])[-memory:]
                z, f, g = point, f_try, g_try
                d, t = lbfgs_direction(g, pairs), 1.0
                if not pairs or float((g * d).sum()) >= 0:
                    pairs, d = [], -g
                    t = lr / max(float(g.abs().max()), 1e-30)
            elif finite:
                curve = f_try - f - slope * t
                t_min = -slope * t * t / (2 * curve) if curve > 0 else 0.5 * t
                t = min(max(t_min, 0.1 * t), 0.5 * t)
            else:
                t = 0.1 * t
            trial = z if d is None else z + t * d  # no accepted point yet (E(x) not finite): stay
            row.append(math.sqrt(f) / float(norms[b]))
        rows.append(row)
        finals.append(z)
    run = ReferenceRun(torch.cat(finals))
    run.residuals = [torch.tensor([r[k] for r in rows]) for k in range(steps)]
    return run


REFERENCE_METHODS = {"adam": adam, "fsm": fsm, "km": km, "grad": gradient_based}
