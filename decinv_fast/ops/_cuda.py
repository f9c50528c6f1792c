"""The ``cuda`` backend: the compiled kernels of ``decinv_fast._C`` (``csrc/``) via ``torch.ops``.

Same arguments and math as the ``torch`` backend (``ops/_torch.py``): one fused kernel per step
(plus a tiny one that adds the per-block norm partials in a fixed order), fp32 math on fp32 /
fp16 / bf16 storage, no host sync, CUDA-graph safe. The launchers (``ops/*_residual_step.py``)
have validated the arguments and checked that the extension loaded.
"""

from __future__ import annotations

import torch

from .._dispatch import BackendUnavailable
from .._extension import extension_error
from . import _library  # noqa: F401  (defines the op schemas the extension implements)


def _ops():
    """``torch.ops.decinv_fast`` with the CUDA kernels loaded."""
    if extension_error() is not None:
        raise BackendUnavailable(f"the compiled extension decinv_fast._C is unavailable: {extension_error()}")
    return torch.ops.decinv_fast


def adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, betas) -> None:
    b1, b2 = betas
    _ops().adam_residual_step(edz, e_x, z, m, v, sq_norm, table, step, master, float(eps), float(b1), float(b2))


def fsm(edz, e_x, z, sq_norm, table, step, master) -> None:
    _ops().fsm_residual_step(edz, e_x, z, sq_norm, table, step, master)


def km(edz, e_x, y, z, sq_norm, table, step, master, alpha) -> None:
    _ops().km_residual_step(edz, e_x, y, z, sq_norm, table, step, master, float(alpha))
