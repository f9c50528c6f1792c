"""Launcher of the fused forward step (residual + update + norms)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import resolve_backend
from . import _torch
from ._common import check_latents, check_step_inputs, host_step, sample_sq_norm
from .adam_residual_step import _backend_module


def fsm_residual_step(edz: torch.Tensor, e_x: torch.Tensor, z: torch.Tensor, sq_norm: torch.Tensor,
                      table: torch.Tensor, step: torch.Tensor, *, master: torch.Tensor | None = None,
                      backend: str = "auto") -> None:
    """One forward step in place. Shapes as in ``adam_residual_step``; ``table`` is ``(steps, 1)``::

        g = edz - e_x ;  z = z - rho_k * g   (rho_k = table[step, 0]) ;  sq_norm[b] = sum_j g[b, j]**2

    With ``master`` the step is applied to the fp32 ``master`` and ``z`` receives its rounding.
    """
    check_latents("fsm_residual_step", z, edz=edz, e_x=e_x)
    check_step_inputs("fsm_residual_step", z, sq_norm, table, step, 1, master)
    impl = resolve_backend("fsm_residual_step", z, backend)
    if impl == "reference":
        _, (rho_k,) = host_step(table, step)
        base = master if master is not None else z
        g = edz.to(base.dtype) - e_x.to(base.dtype)
        base.copy_(reference.fsm_update(base, g, rho_k))
        z.copy_(base)
        sample_sq_norm(g, sq_norm)
    elif impl == "torch":
        _torch.fsm(edz, e_x, z, sq_norm, table, step, master)
    else:
        _backend_module(impl).fsm(edz, e_x, z, sq_norm, table, step, master)
