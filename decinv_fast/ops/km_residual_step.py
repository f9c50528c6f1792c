"""Launcher of the fused inertial Krasnoselskii-Mann step (residual + update + extrapolation + norms)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import resolve_backend
from ._common import check_latents, check_step_inputs, sample_sq_norm, step_row


def km_residual_step(edz: torch.Tensor, e_x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                     sq_norm: torch.Tensor, table: torch.Tensor, step: torch.Tensor, *, alpha: float,
                     backend: str = "auto") -> None:
    """One inertial KM step in place. ``y`` is the point ``edz = E(D(y))`` was evaluated at, ``z``
    the current iterate ``z_k``; with ``rho_k = table[step, 0]``::

        g = edz - e_x ;  z_new = y - rho_k * g
        y = z_new + alpha * (z_new - z)      (the next evaluation point)
        z = z_new ;  sq_norm[b] = sum(g[b]**2)

    The previous iterate needs no buffer of its own: it is ``z`` until the update overwrites it.
    """
    check_latents("km_residual_step", z, edz=edz, e_x=e_x, y=y)
    check_step_inputs("km_residual_step", z, sq_norm, table, step, columns=1)
    impl = resolve_backend("km_residual_step", z, backend)
    if impl == "reference":
        g = edz - e_x
        z_new = reference.fsm_update(y, g, float(table[int(step), 0]))
        y.copy_(reference.km_extrapolate(z_new, z, alpha))
        z.copy_(z_new)
        sample_sq_norm(g, sq_norm)
        return
    g = edz.sub_(e_x)
    sample_sq_norm(g, sq_norm)
    z_new = torch.sub(y, g.mul_(step_row(table, step)[0]), out=g)
    torch.sub(z_new, z, out=y).mul_(alpha).add_(z_new)
    z.copy_(z_new)
