"""The CUDA kernels' per-element math (``csrc/update_math.cuh``), compiled for the CPU, against
``reference.py``.

``tests/cpp/update_math_host.cpp`` runs the very functions the kernels call (load, fp32 update,
rounded store, master copy) over CPU tensors with the CUDA ops' argument lists and checks, so the
arithmetic is proven here although no GPU is: bit-exact in fp32, bit-exact against the
"fp32 math, rounded storage" oracle in fp16/bf16, and within the 2x-torch rule of the fp32 truth.
The build is cached under ``build/`` (ignored by git): reruns only load it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TOLERANCE
from update_cases import (
    METHODS,
    SHAPES,
    STEPS,
    cast_state,
    correctly_rounded_sqrt,
    make_case,
    max_error,
    op_args,
    ref_step,
    step_table,
    storage_ulp,
)

from decinv_fast import reference

REPO = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO / "build" / "test_cuda_math_host"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def host_ops():
    """``torch.ops.decinv_math_host`` (adam, fsm, km), built once with -ffp-contract=off."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler (c++) on PATH")
    from torch.utils import cpp_extension

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="decinv_math_host",
        sources=[str(REPO / "tests" / "cpp" / "update_math_host.cpp")],
        extra_include_paths=[str(REPO / "csrc")],
        extra_cflags=["-O2", "-ffp-contract=off"],
        build_directory=str(BUILD_DIR),
        is_python_module=False,
    )
    return torch.ops.decinv_math_host


def run_kernel(ops, method, state, e_x, edzs, table, eps, start=0):
    """Steps ``start..`` of the host-compiled kernel on ``state`` in place; the per-step norms."""
    batch = e_x.shape[0]
    step = torch.tensor([start], dtype=torch.int64)
    norms = []
    for edz in edzs:
        sq_norm = torch.full((batch,), float("nan"))
        getattr(ops, method)(*op_args(method, state, edz.clone(), e_x, sq_norm, table, step, eps))
        norms.append(sq_norm)
        step += 1
    return norms


def run_reference(method, state, e_x, edzs, table, math, eps, start=0, exact_sqrt=True):
    """The same steps with ``ref_step``; the per-step ``sum(g**2)`` in fp32. ``exact_sqrt``: with a
    correctly rounded ``torch.sqrt`` (as on CUDA), else with the CPU's own."""
    norms = []
    with correctly_rounded_sqrt() if exact_sqrt else contextlib.nullcontext():
        for k, edz in enumerate(edzs, start):
            g = ref_step(method, state, edz, e_x, k, table, math, eps)
            norms.append(g.float().square().sum(1))
    return norms


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", METHODS)
def test_fp32_bit_exact(host_ops, method, shape, master):
    """Bit-exact against reference.py (with a correctly rounded sqrt, as torch has on CUDA)."""
    e_x, init, edzs = make_case(method, shape, torch.float32)
    table, eps = step_table(method), reference.adam_eps(torch.float32)
    kernel = cast_state(init, torch.float32, master)
    truth = cast_state(init, torch.float32, master)
    norms = run_kernel(host_ops, method, kernel, e_x, edzs, table, eps)
    ref_norms = run_reference(method, truth, e_x, edzs, table, torch.float32, eps)
    for key in truth:
        assert torch.equal(kernel[key], truth[key]), f"{method} {key} differs from reference.py"
    if master:  # in fp32 the master equals what it copies: z, or the evaluation point y for KM
        assert torch.equal(kernel["y" if method == "km" else "z"], kernel["master"])
    for got, want in zip(norms, ref_norms, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", METHODS)
def test_fp32_close_to_cpu_reference(host_ops, method, shape):
    """Against reference.py with the CPU's own torch.sqrt (not correctly rounded): only Adam's z can
    differ, by an ulp of the update; everything else is bit-exact."""
    e_x, init, edzs = make_case(method, shape, torch.float32, seed=4)
    table, eps = step_table(method), reference.adam_eps(torch.float32)
    kernel, ref = cast_state(init, torch.float32), cast_state(init, torch.float32)
    run_kernel(host_ops, method, kernel, e_x, edzs, table, eps)
    run_reference(method, ref, e_x, edzs, table, torch.float32, eps, exact_sqrt=False)
    for key in ref:
        if method == "adam" and key == "z":
            torch.testing.assert_close(kernel[key], ref[key], **TOLERANCE[torch.float32])
        else:
            assert torch.equal(kernel[key], ref[key]), f"{method} {key} differs from reference.py"


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_storage(host_ops, method, dtype, shape, master):
    e_x, init, edzs = make_case(method, shape, dtype, seed=1)
    table, eps = step_table(method), reference.adam_eps(dtype)
    kernel = cast_state(init, dtype, master)
    norms = run_kernel(host_ops, method, kernel, e_x, edzs, table, eps)

    # exactly the oracle "fp32 math on the widened state, every stored tensor rounded"
    emulated = cast_state(init, dtype, master)
    ref_norms = run_reference(method, emulated, e_x, edzs, table, torch.float32, eps)
    for key in emulated:
        assert torch.equal(kernel[key], emulated[key]), f"{method} {key}: not the fp32-math/rounded-storage result"
    for got, want in zip(norms, ref_norms, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)

    # and within twice the error of plain same-precision torch, against the fp32 truth
    truth = cast_state(init, torch.float32)
    run_reference(method, truth, e_x, edzs, table, torch.float32, eps)
    same_precision = cast_state(init, dtype)
    run_reference(method, same_precision, e_x, edzs, table, dtype, eps, exact_sqrt=False)
    bound = 2 * max_error(same_precision, truth) + TOLERANCE[dtype]["atol"] + storage_ulp(truth["z"], dtype)
    assert max_error(kernel, truth) <= bound


@pytest.mark.parametrize("method", METHODS)
def test_steps_read_from_the_table(host_ops, method):
    """Starting at step 3 uses rows 3.. of the table (lr schedule and bias corrections)."""
    e_x, init, edzs = make_case(method, (2, 131), torch.float32, seed=2)
    table, eps = step_table(method), reference.adam_eps(torch.float32)
    kernel, truth = cast_state(init, torch.float32), cast_state(init, torch.float32)
    run_kernel(host_ops, method, kernel, e_x, edzs[3:], table, eps, start=3)
    run_reference(method, truth, e_x, edzs[3:], table, torch.float32, eps, start=3)
    assert torch.equal(kernel["z"], truth["z"])
    assert len(edzs) == STEPS


def test_adam_constants_rounded_like_torch(host_ops):
    """``1 - b1`` is formed in double and rounded once (as Python then torch do), not as 1 - (float)b1."""
    betas = (0.8, 0.95)
    e_x, init, edzs = make_case("adam", (1, 1009), torch.float32, seed=3)
    table = step_table("adam")
    kernel = cast_state(init, torch.float32)
    step, sq_norm = torch.zeros(1, dtype=torch.int64), torch.empty(1)
    host_ops.adam(edzs[0], e_x, kernel["z"], kernel["m"], kernel["v"], sq_norm, table, step, None, 1e-8, *betas)
    g = edzs[0] - e_x
    b1, b2 = betas
    m = b1 * init["m"] + (1 - b1) * g
    v = b2 * init["v"] + (1 - b2) * g**2
    with correctly_rounded_sqrt():
        z = init["z"] - table[0, 0].item() * (m / table[0, 1].item()) / (torch.sqrt(v / table[0, 2].item()) + 1e-8)
    assert torch.equal(kernel["m"], m) and torch.equal(kernel["v"], v) and torch.equal(kernel["z"], z)


@pytest.mark.parametrize("method", METHODS)
def test_checks_name_the_argument(host_ops, method):
    """The C++ argument checks (shared with the CUDA launchers) reject bad inputs by name."""
    e_x, init, edzs = make_case(method, (2, 7), torch.float32)
    table, step, sq_norm = step_table(method), torch.zeros(1, dtype=torch.int64), torch.empty(2)
    op = getattr(host_ops, method)
    state = cast_state(init, torch.float32)
    with pytest.raises(RuntimeError, match="edz must match"):
        op(*op_args(method, state, edzs[0][:, :5].contiguous(), e_x, sq_norm, table, step, 1e-8))
    with pytest.raises(RuntimeError, match="sq_norm must be"):
        op(*op_args(method, state, edzs[0], e_x, torch.empty(3), table, step, 1e-8))
    with pytest.raises(RuntimeError, match="table must be"):
        op(*op_args(method, state, edzs[0], e_x, sq_norm, torch.zeros(4, 2), step, 1e-8))
    with pytest.raises(RuntimeError, match="step must be"):
        op(*op_args(method, state, edzs[0], e_x, sq_norm, table, step.int(), 1e-8))
    with pytest.raises(RuntimeError, match="outside the table"):
        op(*op_args(method, state, edzs[0], e_x, sq_norm, table, step + 100, 1e-8))
    with pytest.raises(RuntimeError, match="must be contiguous"):
        op(*op_args(method, state, edzs[0].t().contiguous().t(), e_x, sq_norm, table, step, 1e-8))
    with pytest.raises(RuntimeError, match="master must be float32"):
        op(*op_args(method, dict(state, master=state["z"].half()), edzs[0], e_x, sq_norm, table, step, 1e-8))
    doubles = cast_state(init, torch.float64)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        op(*op_args(method, doubles, edzs[0].double(), e_x.double(), sq_norm, table, step, 1e-8))


def test_sq_norm_may_be_strided(host_ops):
    """``sq_norm`` can be a strided view (a column of a history buffer), as the torch backend allows."""
    e_x, init, edzs = make_case("fsm", (3, 131), torch.float32, seed=5)
    history = torch.zeros(3, 2)
    state = cast_state(init, torch.float32)
    host_ops.fsm(edzs[0], e_x, state["z"], history[:, 1], step_table("fsm"), torch.zeros(1, dtype=torch.int64), None)
    torch.testing.assert_close(history[:, 1], (edzs[0] - e_x).square().sum(1), rtol=1e-5, atol=0)
    assert torch.equal(history[:, 0], torch.zeros(3))
