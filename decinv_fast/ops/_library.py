"""``torch.library`` schemas of the fused update ops, with fake (meta) implementations.

The schemas live here, not in the compiled extension, so the ops exist (and ``torch.compile`` /
fake tensors can check their shapes) whether or not ``decinv_fast._C`` is built; the extension
only adds CUDA kernels to them (``csrc/bindings.cpp``). All three ops return nothing and write
their results in place::

    decinv_fast::adam_residual_step(edz, e_x, z!, m!, v!, sq_norm!, table, step, master!?, eps, b1, b2)
    decinv_fast::fsm_residual_step(edz, e_x, z!, sq_norm!, table, step, master!?)
    decinv_fast::km_residual_step(edz, e_x, y!, z!, sq_norm!, table, step, master!?, alpha)

Shapes: latents ``(B, n)`` contiguous in one dtype (fp32/fp16/bf16, fp64 on the torch backend);
``sq_norm`` fp32 ``(B,)``; ``table`` fp32 (fp64 for fp64 latents) ``(steps, 3)`` for Adam and
``(steps, 1)`` otherwise; ``step`` int64 with one
element; ``master`` optional fp32 ``(B, n)``. The math is in each launcher's docstring
(``ops/*_residual_step.py``). Importing this module twice defines nothing twice.
"""

from __future__ import annotations

import torch

from .._dispatch import KERNEL_DTYPES
from ._common import check_latents, check_step_inputs

NAMESPACE = "decinv_fast"

SCHEMAS = {
    "adam_residual_step": "(Tensor edz, Tensor e_x, Tensor(a!) z, Tensor(b!) m, Tensor(c!) v, Tensor(d!) sq_norm, "
                          "Tensor table, Tensor step, Tensor(e!)? master, float eps, float b1, float b2) -> ()",
    "fsm_residual_step": "(Tensor edz, Tensor e_x, Tensor(a!) z, Tensor(b!) sq_norm, Tensor table, Tensor step, "
                         "Tensor(c!)? master) -> ()",
    "km_residual_step": "(Tensor edz, Tensor e_x, Tensor(a!) y, Tensor(b!) z, Tensor(c!) sq_norm, Tensor table, "
                        "Tensor step, Tensor(d!)? master, float alpha) -> ()",
}


def is_defined(name: str) -> bool:
    """Whether ``decinv_fast::<name>`` is already known to the dispatcher."""
    return hasattr(getattr(torch.ops, NAMESPACE), name)


def _check_kernel_dtype(name: str, z: torch.Tensor) -> None:
    if z.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name}: latents must be one of {KERNEL_DTYPES}, got {z.dtype}")


def _fake_adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, b1, b2) -> None:
    _check_kernel_dtype("adam_residual_step", z)
    check_latents("adam_residual_step", z, edz=edz, e_x=e_x, m=m, v=v)
    check_step_inputs("adam_residual_step", z, sq_norm, table, step, 3, master)


def _fake_fsm(edz, e_x, z, sq_norm, table, step, master) -> None:
    _check_kernel_dtype("fsm_residual_step", z)
    check_latents("fsm_residual_step", z, edz=edz, e_x=e_x)
    check_step_inputs("fsm_residual_step", z, sq_norm, table, step, 1, master)


def _fake_km(edz, e_x, y, z, sq_norm, table, step, master, alpha) -> None:
    _check_kernel_dtype("km_residual_step", z)
    check_latents("km_residual_step", z, edz=edz, e_x=e_x, y=y)
    check_step_inputs("km_residual_step", z, sq_norm, table, step, 1, master)


FAKES = {"adam_residual_step": _fake_adam, "fsm_residual_step": _fake_fsm, "km_residual_step": _fake_km}


def define_ops() -> None:
    """Define the schemas and register their fake implementations (once per process)."""
    for name, schema in SCHEMAS.items():
        if is_defined(name):
            continue
        qualname = f"{NAMESPACE}::{name}"
        torch.library.define(qualname, schema)
        torch.library.register_fake(qualname, FAKES[name])


define_ops()
