"""Cases and oracles shared by the compiled-kernel tests (test_cuda_math_host.py, test_cuda_ext.py).

A case is a small problem state (latents ``(B, n)``) and a sequence of residuals; ``ref_step``
advances a state by one step with ``reference.py``'s update functions in a chosen math dtype and
storage dtype, which gives the three oracles the kernels are held to:

* ``math=fp32, store=dtype``: what the kernels compute (fp32 math, state rounded when stored),
* ``math=fp32, store=fp32``: the fp32 truth the low-precision errors are measured against,
* ``math=dtype, store=dtype``: plain torch in the same precision (the 2x-error yardstick).
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import torch

from decinv_fast import reference

METHODS = ("adam", "fsm", "km")
ALPHA = 0.3
BETAS = reference.ADAM_BETAS
SHAPES = [(1, 1), (3, 7), (2, 131), (1, 1009)]  # 1 element, primes
STEPS = 8
# residual scale per step: ordinary, large, and small enough for Adam's eps to matter in fp16
SCALES = (0.5, 0.2, 3.0, 1e-4, 0.05, 1.0, 2e-3, 0.3)


@contextlib.contextmanager
def correctly_rounded_sqrt():
    """Within this block ``torch.sqrt`` (so ``reference.py``'s) rounds correctly, as CUDA's does.

    On the CPU torch's fp32 sqrt is not correctly rounded (about one input in five comes out one
    ulp off); the kernels' is (``__fsqrt_rn`` / ``std::sqrt``). The fp64 square root rounded once
    to fp32 is the correctly rounded fp32 one (53 >= 2*24 + 2 bits), so this makes the reference
    an exact oracle for the kernels' arithmetic.
    """
    original = torch.sqrt
    with mock.patch.object(torch, "sqrt", lambda t: original(t.double()).to(t.dtype)):
        yield


def step_table(method: str, steps: int = STEPS, lr: float = 0.05) -> torch.Tensor:
    """The per-step table the loop builds: ``(lr_k, 1-b1^(k+1), 1-b2^(k+1))`` for Adam, ``(rho_k,)``
    otherwise, on the paper schedule (warmup then cosine: the rate changes every step)."""
    rates = reference.lr_schedule(steps, lr if method == "adam" else 0.5, "paper")
    if method == "adam":
        b1, b2 = BETAS
        rows = [(r, 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)) for k, r in enumerate(rates)]
    else:
        rows = [(r,) for r in rates]
    return torch.tensor(rows, dtype=torch.float32)


def make_case(method: str, shape: tuple[int, int], dtype: torch.dtype, seed: int = 0):
    """``(e_x, state, edzs)``: ``e_x`` and the initial state (``z``, and ``m``, ``v`` for Adam or ``y``
    for KM) in ``dtype``, and one ``edz`` per step in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda: torch.randn(shape, generator=g)
    e_x = rand().to(dtype)
    state = {"z": (e_x.float() + 0.1 * rand()).to(dtype)}
    if method == "adam":
        state["m"] = (0.01 * rand()).to(dtype)
        state["v"] = (1e-4 * rand().abs()).to(dtype)
    if method == "km":
        state["y"] = (state["z"].float() + 0.05 * rand()).to(dtype)
    edzs = [(e_x.float() + s * rand()).to(dtype) for s in SCALES[:STEPS]]
    return e_x, state, edzs


def cast_state(state: dict, dtype: torch.dtype, master: bool = False) -> dict:
    """A copy of ``state`` in ``dtype``, with a fp32 ``master`` copy of ``z`` (of ``y`` for KM) when asked."""
    out = {key: t.to(dtype).clone() for key, t in state.items() if key != "master"}
    if master:
        out["master"] = state["y" if "y" in state else "z"].float().clone()
    return out


def ref_step(method: str, state: dict, edz: torch.Tensor, e_x: torch.Tensor, k: int, table: torch.Tensor,
             math: torch.dtype, eps: float) -> torch.Tensor:
    """One step of ``reference.py``'s update on ``state`` in place: math in ``math``, every tensor
    stored back in its own dtype (``master``, if present, is the fp32 ``z``, or ``y`` for KM). Returns ``g``."""
    row = table[k].tolist()
    if method == "km":
        point = state["master"] if "master" in state else state["y"]
        g = edz.to(math) - e_x.to(math)
        z = reference.fsm_update(point.to(math), g, row[0])
        y = reference.km_extrapolate(z, state["z"].to(math), ALPHA)
        if "master" in state:
            state["master"].copy_(y)
        state["y"].copy_(y)
        state["z"].copy_(z)
        return g
    base = state["master"] if "master" in state else state["z"]
    g = edz.to(math) - e_x.to(math)
    if method == "adam":
        z, m, v = reference.adam_update(base.to(math), state["m"].to(math), state["v"].to(math), g, k, row[0],
                                        eps, BETAS)
        state["m"].copy_(m), state["v"].copy_(v)
    else:
        z = reference.fsm_update(base.to(math), g, row[0])
    if "master" in state:
        state["master"].copy_(z)
    state["z"].copy_(z)
    return g


def op_args(method: str, state: dict, edz: torch.Tensor, e_x: torch.Tensor, sq_norm: torch.Tensor,
            table: torch.Tensor, step: torch.Tensor, eps: float) -> tuple:
    """Positional arguments of ``torch.ops.decinv_fast.<method>_residual_step`` for ``state``."""
    master = state.get("master")
    if method == "adam":
        return (edz, e_x, state["z"], state["m"], state["v"], sq_norm, table, step, master, eps, *BETAS)
    if method == "fsm":
        return (edz, e_x, state["z"], sq_norm, table, step, master)
    return (edz, e_x, state["y"], state["z"], sq_norm, table, step, master, ALPHA)


def max_error(state: dict, truth: dict) -> float:
    """Largest absolute error of the stored ``z`` against the fp32 truth."""
    return (state["z"].double() - truth["z"].double()).abs().max().item()


def storage_ulp(x: torch.Tensor, dtype: torch.dtype) -> float:
    """One ulp of ``dtype`` at the magnitude of ``x``'s largest element: the slack for a single
    rounding that went the other way (both sides of the 2x rule store their state in ``dtype``)."""
    amax = x.abs().max().item()
    return torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(amax)) if amax > 0 else 0.0
