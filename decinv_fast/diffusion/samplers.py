"""DDIM and BDIA-DDIM sampling and inversion over a :class:`~.schedule.Schedule`.

Every function takes ``model`` (a diffusers UNet, a callable ``eps(z, t, **cond)`` or a bound
:class:`~.denoiser.Denoiser`), ``schedule`` (a ``Schedule`` or a diffusers scheduler after
``set_timesteps``) and conditioning keywords for :class:`~.denoiser.Denoiser`
(``guidance_scale``, ``encoder_hidden_states``, ``negative_encoder_hidden_states``, ...).
Latents are ``(B, C, h, w)`` for UNets (any shape for callables); the math runs in their dtype.
Each pass makes exactly one model call per step (``N`` for sampling, ``N`` for DDIM inversion,
``N - 1`` for BDIA inversion from a pair) and runs without autograd. A result with NaN/inf values
(a non-finite ``eps``, or an overflow in fp16) is a ``FloatingPointError``, not a returned tensor.

``callback(i, z_i)``, if given, sees every state the pass produces, by state index ``i``
(``N`` = noise, ``0`` = clean).

Exactness. ``bdia_invert`` rebuilds ``z_T`` from the last *pair* ``(z_0, z_1)`` of
``bdia_sample`` up to rounding (eq. 3 of :mod:`.steps`). ``ddim_invert`` and
``bdia_invert_from_z0`` start from ``z_0`` alone and are approximate: DDIM inversion uses
``eps(z_i, t_{i+1})`` in place of the unknown ``eps(z_{i+1}, t_{i+1})`` at every step; the
from-``z_0`` BDIA inversion makes that approximation once (to get ``z_1``) and is exact after it,
but the error of ``z_1`` is carried to ``z_T``, amplified by a factor that grows like ``gamma^{-N}`` (each
inverse step has the modes 1 and ``-1/gamma``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..options import check_finite
from .checks import check_callback, check_gamma
from .denoiser import Denoiser, as_denoiser
from .schedule import Schedule, as_schedule
from .steps import bdia_inverse_step, bdia_step, ddim_step

Callback = Callable[[int, torch.Tensor], None] | None


class BdiaPair(NamedTuple):
    """The last two states of a BDIA pass: everything exact inversion needs."""

    z0: torch.Tensor
    z1: torch.Tensor


def prepare(model, schedule, z: torch.Tensor, name: str, cond: dict, callback: Callback = None
            ) -> tuple[Denoiser, Schedule]:
    """The denoiser (checked against the state ``z``, called ``name`` in errors) and the schedule a
    sampler or inversion runs with, ``callback`` checked too; shared by every loop over the schedule in this
    package (all before the first model call)."""
    check_callback(callback)
    denoiser = as_denoiser(model, **cond)
    denoiser.check(z, name)
    return denoiser, as_schedule(schedule)


def check_result(caller: str, z: torch.Tensor) -> torch.Tensor:
    """``z``, the result of a pass, or a ``FloatingPointError`` naming ``caller`` if it holds NaN/inf
    (one check per pass: a non-finite ``eps`` or an overflow anywhere reaches the result)."""
    bad = int((~torch.isfinite(z.detach())).sum())
    if bad:
        raise FloatingPointError(
            f"{caller}: the result has {bad} NaN/inf value(s) in {z.dtype}; the eps model returned non-finite values "
            "or a step overflowed (fp16: run the model in float32, or use a larger gamma for inversion)"
        )
    return z


def _check_pair(z0: torch.Tensor, z1: torch.Tensor) -> None:
    if not isinstance(z1, torch.Tensor):
        raise TypeError(f"z1 must be a tensor, got {type(z1).__name__}")
    if z1.shape != z0.shape:
        raise ValueError(f"z1 {tuple(z1.shape)} and z0 {tuple(z0.shape)} must have the same shape")
    if z1.dtype != z0.dtype or z1.device != z0.device:
        raise TypeError(f"z1 ({z1.dtype}, {z1.device}) and z0 ({z0.dtype}, {z0.device}) must match in dtype/device")
    check_finite("z1", z1)


@torch.no_grad()
def ddim_sample(model, schedule, z_T: torch.Tensor, *, callback: Callback = None, **cond) -> torch.Tensor:
    """Deterministic DDIM (eta = 0): ``z_{i-1} = DDIM_{i->i-1}(z_i)`` for ``i = N..1``; returns ``z_0``.

    It runs the loop of :func:`bdia_sample` at ``gamma = 0``, where every BDIA step is exactly the
    DDIM step (:func:`.steps.bdia_step`).
    """
    denoiser, grid = prepare(model, schedule, z_T, "z_T", cond, callback)
    return bdia_pass(denoiser, grid, z_T, 0.0, callback, caller="ddim_sample").z0


@torch.no_grad()
def ddim_invert(model, schedule, z_0: torch.Tensor, *, callback: Callback = None, **cond) -> torch.Tensor:
    """Approximate DDIM inversion: ``z_{i+1} = DDIM(z_i)`` with ``eps(z_i, t_{i+1})``; returns ``z_T``.

    The usual inversion (as in diffusers' ``DDIMInverseScheduler``): the model is evaluated at the
    current state with the *next* timestep, standing in for ``eps(z_{i+1}, t_{i+1})``. The error is
    small for small steps and smooth models, never zero.
    """
    denoiser, grid = prepare(model, schedule, z_0, "z_0", cond, callback)
    z = z_0
    for i in range(grid.num_steps):
        eps = denoiser(z, grid.t(i + 1))
        z = ddim_step(z, eps, grid.alphabar(i), grid.alphabar(i + 1))
        if callback is not None:
            callback(i + 1, z)
    return check_result("ddim_invert", z)


@torch.no_grad()
def bdia_sample(model, schedule, z_T: torch.Tensor, *, gamma: float, callback: Callback = None, **cond) -> BdiaPair:
    """BDIA-DDIM sampling; returns the pair ``(z_0, z_1)``.

    ``z_{N-1} = DDIM_{N->N-1}(z_N)`` (no earlier state to look back on), then for ``i = N-1..1``

        z_{i-1} = gamma * (z_{i+1} - DDIM_{i->i+1}(z_i)) + DDIM_{i->i-1}(z_i),    gamma in [0, 1].

    ``gamma = 0`` is DDIM exactly. With one step, ``z_1`` is a copy of ``z_T``.
    """
    gamma = check_gamma(gamma, inverse=False)
    denoiser, grid = prepare(model, schedule, z_T, "z_T", cond, callback)
    return bdia_pass(denoiser, grid, z_T, gamma, callback)


def bdia_pass(denoiser: Denoiser, grid: Schedule, z_T: torch.Tensor, gamma: float,
              callback: Callback = None, *, caller: str = "bdia_sample") -> BdiaPair:
    """The BDIA loop of :func:`bdia_sample` (and of :func:`ddim_sample`, ``gamma = 0``) on validated
    arguments, in the caller's grad mode; a NaN/inf result is an error naming ``caller``."""
    n = grid.num_steps
    above = z_T if n > 1 else z_T.clone()  # one step: z_1 is z_T, returned as a new tensor (not the caller's)
    z = ddim_step(z_T, denoiser(z_T, grid.t(n)), grid.alphabar(n), grid.alphabar(n - 1))
    if callback is not None:
        callback(n - 1, z)
    for i in range(n - 1, 0, -1):
        eps = denoiser(z, grid.t(i))
        below = bdia_step(above, z, eps, grid.alphabar(i), grid.alphabar(i - 1), grid.alphabar(i + 1), gamma)
        above, z = z, below
        if callback is not None:
            callback(i - 1, z)
    return BdiaPair(check_result(caller, z), check_result(caller, above))


@torch.no_grad()
def bdia_invert(model, schedule, z0: torch.Tensor, z1: torch.Tensor, *, gamma: float,
                callback: Callback = None, **cond) -> torch.Tensor:
    """Exact BDIA inversion from the pair ``(z_0, z_1)``; returns ``z_T``.

    For ``i = 1..N-1``: ``z_{i+1} = (z_{i-1} - DDIM_{i->i-1}(z_i)) / gamma + DDIM_{i->i+1}(z_i)``,
    ``N - 1`` model calls. ``gamma`` (in (0, 1]) and the conditioning must be those of sampling.
    """
    gamma = check_gamma(gamma, inverse=True)
    denoiser, grid = prepare(model, schedule, z0, "z0", cond, callback)
    _check_pair(z0, z1)
    return _invert_pair(denoiser, grid, z0, z1, gamma, callback, "bdia_invert")


def _invert_pair(denoiser: Denoiser, grid: Schedule, z0: torch.Tensor, z1: torch.Tensor, gamma: float,
                 callback: Callback, caller: str) -> torch.Tensor:
    below, z = z0, z1 if grid.num_steps > 1 else z1.clone()  # one step: z_T is z_1 (a new tensor, not the caller's)
    for i in range(1, grid.num_steps):
        eps = denoiser(z, grid.t(i))
        above = bdia_inverse_step(below, z, eps, grid.alphabar(i), grid.alphabar(i - 1), grid.alphabar(i + 1), gamma)
        below, z = z, above
        if callback is not None:
            callback(i + 1, z)
    return check_result(caller, z)


@torch.no_grad()
def bdia_invert_from_z0(model, schedule, z0: torch.Tensor, *, gamma: float, callback: Callback = None,
                        **cond) -> torch.Tensor:
    """*Approximate* BDIA inversion from ``z_0`` alone; returns ``z_T``.

    ``z_1`` is unknown, so it is estimated by one DDIM inversion step ``z_1 ~ DDIM_{0->1}(z_0)``
    with ``eps(z_0, t_1)`` (the only approximation), then :func:`bdia_invert` runs from
    ``(z_0, z_1)``: ``N`` model calls. The error of ``z_1`` propagates through the exact inverse
    recursion; compare with :func:`ddim_invert`, which approximates at every step.
    """
    gamma = check_gamma(gamma, inverse=True)
    denoiser, grid = prepare(model, schedule, z0, "z0", cond, callback)
    z1 = ddim_step(z0, denoiser(z0, grid.t(1)), grid.alphabar(0), grid.alphabar(1))
    if callback is not None:
        callback(1, z1)
    return _invert_pair(denoiser, grid, z0, z1, gamma, callback, "bdia_invert_from_z0")
