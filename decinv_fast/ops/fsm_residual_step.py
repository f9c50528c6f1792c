"""Launcher of the fused forward step (residual + update + norms)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import resolve_backend
from ._common import check_latents, check_step_inputs, sample_sq_norm, step_row


def fsm_residual_step(edz: torch.Tensor, e_x: torch.Tensor, z: torch.Tensor, sq_norm: torch.Tensor,
                      table: torch.Tensor, step: torch.Tensor, *, backend: str = "auto") -> None:
    """One forward step in place: ``g = edz - e_x``; ``z = z - rho_k * g`` with
    ``rho_k = table[step, 0]``; ``sq_norm[b] = sum(g[b]**2)`` (fp32). ``edz`` is scratch afterwards."""
    check_latents("fsm_residual_step", z, edz=edz, e_x=e_x)
    check_step_inputs("fsm_residual_step", z, sq_norm, table, step, columns=1)
    impl = resolve_backend("fsm_residual_step", z, backend)
    if impl == "reference":
        g = edz - e_x
        z.copy_(reference.fsm_update(z, g, float(table[int(step), 0])))
        sample_sq_norm(g, sq_norm)
        return
    g = edz.sub_(e_x)
    sample_sq_norm(g, sq_norm)
    z.sub_(g.mul_(step_row(table, step)[0]))
