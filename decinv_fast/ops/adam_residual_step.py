"""Launcher of the fused gradient-free Adam step (residual + moments + update + norms)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import resolve_backend
from ._common import check_latents, check_step_inputs, sample_sq_norm, step_row


def adam_residual_step(edz: torch.Tensor, e_x: torch.Tensor, z: torch.Tensor, m: torch.Tensor,
                       v: torch.Tensor, sq_norm: torch.Tensor, table: torch.Tensor, step: torch.Tensor,
                       *, eps: float, betas: tuple[float, float] = reference.ADAM_BETAS,
                       backend: str = "auto") -> None:
    """One gradient-free Adam step, in place on ``z``, ``m``, ``v`` and ``sq_norm``.

    With ``k = step`` and ``(lr_k, c1_k, c2_k) = table[k]`` (``c1_k = 1 - b1**(k+1)``,
    ``c2_k = 1 - b2**(k+1)``)::

        g = edz - e_x
        m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g*g
        z = z - lr_k * (m / c1_k) / (sqrt(v / c2_k) + eps)
        sq_norm[b] = sum(g[b]**2)        (fp32, one value per sample b = leading index)

    All latents share one shape ``(B, ...)``, dtype and device. ``edz`` is scratch afterwards.
    ``step`` is not advanced here.
    """
    check_latents("adam_residual_step", z, edz=edz, e_x=e_x, m=m, v=v)
    check_step_inputs("adam_residual_step", z, sq_norm, table, step, columns=3)
    impl = resolve_backend("adam_residual_step", z, backend)
    if impl == "reference":
        k = int(step)
        lr_k = float(table[k, 0])
        g = edz - e_x
        z_new, m_new, v_new = reference.adam_update(z, m, v, g, k, lr_k, eps, betas)
        z.copy_(z_new), m.copy_(m_new), v.copy_(v_new)
        sample_sq_norm(g, sq_norm)
        return
    _adam_torch(edz, e_x, z, m, v, sq_norm, step_row(table, step), eps, betas)


def _adam_torch(edz, e_x, z, m, v, sq_norm, row, eps, betas) -> None:
    """The reference arithmetic, op for op, on preallocated buffers: bit-identical to it."""
    b1, b2 = betas
    lr_k, c1_k, c2_k = row[0], row[1], row[2]
    g = edz.sub_(e_x)
    sample_sq_norm(g, sq_norm)
    tmp = torch.mul(g, 1 - b1)
    m.mul_(b1).add_(tmp)
    torch.mul(g, g, out=tmp)
    v.mul_(b2).add_(tmp.mul_(1 - b2))
    m_hat = torch.div(m, c1_k, out=tmp)
    denom = torch.div(v, c2_k, out=g).sqrt_().add_(eps)
    z.sub_(m_hat.mul_(lr_k).div_(denom))
