"""Launcher of the fused gradient-free Adam step (residual + moments + update + norms)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import resolve_backend
from . import _torch
from ._common import check_latents, check_step_inputs, host_step, sample_sq_norm


def adam_residual_step(edz: torch.Tensor, e_x: torch.Tensor, z: torch.Tensor, m: torch.Tensor,
                       v: torch.Tensor, sq_norm: torch.Tensor, table: torch.Tensor, step: torch.Tensor,
                       *, eps: float, betas: tuple[float, float] = reference.ADAM_BETAS,
                       master: torch.Tensor | None = None, backend: str = "auto") -> None:
    """One gradient-free Adam step, in place on ``z``, ``m``, ``v``, ``sq_norm`` (and ``master``).

    Shapes: latents ``(B, n)`` contiguous, one dtype (fp32/fp16/bf16); ``sq_norm`` fp32 ``(B,)``;
    ``table`` fp32 ``(steps, 3)`` (fp64 for fp64 latents); ``step`` int64 ``(1,)``; ``master`` optional fp32 ``(B, n)``.
    With ``k = step`` and ``(lr_k, c1_k, c2_k) = table[k]`` (``c1_k = 1 - b1**(k+1)``,
    ``c2_k = 1 - b2**(k+1)``)::

        g = edz - e_x
        m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g*g
        z = z - lr_k * (m / c1_k) / (sqrt(v / c2_k) + eps)
        sq_norm[b] = sum_j g[b, j]**2                              (fp32)

    With ``master`` the update is applied to the fp32 ``master`` and ``z`` receives its rounding.
    ``edz`` is scratch afterwards; ``step`` is not advanced here.
    """
    check_latents("adam_residual_step", z, edz=edz, e_x=e_x, m=m, v=v)
    check_step_inputs("adam_residual_step", z, sq_norm, table, step, 3, master)
    impl = resolve_backend("adam_residual_step", z, backend)
    if impl == "reference":
        k, (lr_k, _, _) = host_step(table, step)
        work = (lambda t: t.float()) if master is not None else (lambda t: t)
        g = work(edz) - work(e_x)
        z_new, m_new, v_new = reference.adam_update(master if master is not None else z, work(m), work(v),
                                                    g, k, lr_k, eps, betas)
        if master is not None:
            master.copy_(z_new)
        z.copy_(z_new), m.copy_(m_new), v.copy_(v_new)
        sample_sq_norm(g, sq_norm)
    elif impl == "torch":
        _torch.adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, betas)
    else:
        _backend_module(impl).adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, betas)


def _backend_module(impl: str):
    if impl == "triton":
        from . import _triton

        return _triton
    from . import _cuda

    return _cuda
