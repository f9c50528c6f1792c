"""Launcher of the fused inertial Krasnoselskii-Mann step (residual + update + extrapolation + norms)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import resolve_backend
from . import _torch
from ._common import check_latents, check_step_inputs, host_step, sample_sq_norm
from .adam_residual_step import _backend_module


def km_residual_step(edz: torch.Tensor, e_x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                     sq_norm: torch.Tensor, table: torch.Tensor, step: torch.Tensor, *, alpha: float,
                     master: torch.Tensor | None = None, backend: str = "auto") -> None:
    """One inertial KM step in place. ``y`` is the point ``edz = E(D(y))`` was evaluated at and ``z``
    the iterate ``z_k``; with ``rho_k = table[step, 0]``::

        g = edz - e_x ;  z_new = y - rho_k * g
        y = z_new + alpha * (z_new - z_k)      (the next evaluation point)
        z = z_new ;  sq_norm[b] = sum_j g[b, j]**2

    The previous iterate needs no buffer of its own: it is ``z`` until the update overwrites it.
    ``master``, if given, is the fp32 copy of ``y``: the update reads it instead of ``y`` and stores
    the new evaluation point into it (``y`` and ``z`` receive roundings), so steps below the storage
    precision accumulate instead of being rounded away.
    """
    check_latents("km_residual_step", z, edz=edz, e_x=e_x, y=y)
    check_step_inputs("km_residual_step", z, sq_norm, table, step, 1, master)
    impl = resolve_backend("km_residual_step", z, backend)
    if impl == "reference":
        _, (rho_k,) = host_step(table, step)
        point = master if master is not None else y
        g = edz.to(point.dtype) - e_x.to(point.dtype)
        z_new = reference.fsm_update(point, g, rho_k)
        point.copy_(reference.km_extrapolate(z_new, z.to(point.dtype), alpha))
        y.copy_(point)
        z.copy_(z_new)
        sample_sq_norm(g, sq_norm)
    elif impl == "torch":
        _torch.km(edz, e_x, y, z, sq_norm, table, step, master, alpha)
    else:
        _backend_module(impl).km(edz, e_x, y, z, sq_norm, table, step, master, alpha)
