"""The ``triton`` backend of the fused update ops against ``reference.py``.

CPU tests run the kernels under the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest.py
before any kernel is decorated); ``requires_cuda`` tests run them on a GPU (compiled when pytest is
started with ``TRITON_INTERPRET=0``). fp32 must match the fp32 reference to ~1 ulp; fp16/bf16 pass
when ``err(triton, fp32 ref) <= 2 * err(torch backend, fp32 ref) + atol`` (DESIGN §5.8).
"""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import TOLERANCE

import decinv_fast
from decinv_fast import reference
from decinv_fast._dispatch import BackendUnavailable, backend_problem, resolve_backend, triton_interpreting
from decinv_fast.ops import _triton, adam_residual_step, fsm_residual_step, km_residual_step

pytest.importorskip("triton")

OPS = ("adam", "fsm", "km")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STEPS = 4  # steps applied; the schedule below changes lr_k and the bias corrections at each one
TABLE_STEPS = 10
ALPHA = 0.3
BASE_LR = {"adam": 0.01, "fsm": 0.6, "km": 0.5}
NORM_RTOL = 1e-6  # per-sample norms: the kernels sum in another order than torch.sum

interpreted = pytest.mark.skipif(not triton_interpreting(), reason="CPU tests need TRITON_INTERPRET=1")


def rates(op: str) -> list[float]:
    return reference.lr_schedule(TABLE_STEPS, BASE_LR[op], "paper")


def step_table(op: str, device="cpu") -> torch.Tensor:
    """Rows as the engine stores them: ``(lr_k, 1-b1^(k+1), 1-b2^(k+1))`` for Adam, ``(rho_k,)`` else."""
    b1, b2 = reference.ADAM_BETAS
    if op == "adam":
        rows = [(r, 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)) for k, r in enumerate(rates(op))]
    else:
        rows = [(r,) for r in rates(op)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def make_data(shape, steps=STEPS, seed=0) -> dict:
    """fp32 inputs: ``e_x``, the starting ``z`` and ``y`` (KM) and one ``edz`` per step."""
    gen = torch.Generator().manual_seed(seed)
    e_x = torch.randn(shape, generator=gen)
    return dict(e_x=e_x, z=e_x + 0.1 * torch.randn(shape, generator=gen),
                y=e_x + 0.1 * torch.randn(shape, generator=gen),
                edz=[e_x + 0.5 * torch.randn(shape, generator=gen) for _ in range(steps)])


def run_op(op, backend, data, dtype, use_master, device="cpu", steps=STEPS) -> dict:
    """Apply ``steps`` steps of ``op`` with ``backend`` to ``data`` stored in ``dtype``.

    Returns the final state (``z``, ``m``/``v`` or ``y``, ``master``) and the norms of every step.
    """
    cast = lambda t: t.to(device=device, dtype=dtype).clone()
    e_x, z = cast(data["e_x"]), cast(data["z"])
    state = dict(z=z)
    if op == "adam":
        state.update(m=torch.zeros_like(z), v=torch.zeros_like(z))
    if op == "km":
        state["y"] = cast(data["y"])
    # the fp32 master copies z (for KM: the evaluation point y)
    master = state["y" if op == "km" else "z"].float().clone() if use_master else None
    table, step = step_table(op, device), torch.zeros(1, dtype=torch.int64, device=device)
    sq_norm = torch.zeros(z.shape[0], device=device)
    norms = []
    for k in range(steps):
        edz = cast(data["edz"][k])
        step.fill_(k)
        common = dict(master=master, backend=backend)
        if op == "adam":
            adam_residual_step(edz, e_x, z, state["m"], state["v"], sq_norm, table, step,
                               eps=reference.adam_eps(dtype), **common)
        elif op == "fsm":
            fsm_residual_step(edz, e_x, z, sq_norm, table, step, **common)
        else:
            km_residual_step(edz, e_x, state["y"], z, sq_norm, table, step, alpha=ALPHA, **common)
        norms.append(sq_norm.clone())
    if master is not None:
        state["master"] = master
    state["sq_norm"] = torch.stack(norms)
    return {key: t.cpu() for key, t in state.items()}


def run_reference(op, data, dtype, steps=STEPS) -> dict:
    """``reference.py`` in fp32 from the inputs rounded to ``dtype`` (the oracle for every dtype)."""
    r = lambda t: t.to(dtype).float()
    e_x, z, y = r(data["e_x"]), r(data["z"]), r(data["y"])
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    norms = []
    for k, rate in enumerate(rates(op)[:steps]):
        g = r(data["edz"][k]) - e_x
        if op == "adam":
            z, m, v = reference.adam_update(z, m, v, g, k, rate, reference.adam_eps(dtype))
        elif op == "fsm":
            z = reference.fsm_update(z, g, rate)
        else:
            z_new = reference.fsm_update(y, g, rate)
            y = reference.km_extrapolate(z_new, z, ALPHA)
            z = z_new
        norms.append(g.square().sum(1))
    return dict(z=z, m=m, v=v, y=y, master=y if op == "km" else z, sq_norm=torch.stack(norms))


def bf16_ulp(x: torch.Tensor) -> float:
    amax = x.abs().max().item()
    return 2.0 ** (math.floor(math.log2(amax)) - 7) if amax > 0 else 0.0


def is_rounding_of(master: torch.Tensor, low: torch.Tensor) -> bool:
    """``low`` is ``master`` rounded to nearest (or, for bf16 under the interpreter, toward zero)."""
    nearest = master.to(low.dtype)
    if low.dtype != torch.bfloat16:
        return torch.equal(nearest, low)
    toward_zero = (master.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)
    return bool(((low == nearest) | (low == toward_zero)).all())


def check_against_reference(got: dict, ref: dict, dtype, baseline: dict | None = None, steps=STEPS) -> None:
    """fp32: ~1 ulp of the reference. fp16/bf16: at most twice the ``baseline`` (torch backend) error."""
    for key, value in got.items():
        expected = ref[key]
        if key == "sq_norm":
            rel = ((value - expected).abs() / expected).max().item()
            limit = NORM_RTOL
            if baseline is not None:
                limit += 2 * ((baseline[key] - expected).abs() / expected).max().item()
            assert rel <= limit, f"sq_norm: relative error {rel:.3g} > {limit:.3g}"
        elif dtype == torch.float32:
            torch.testing.assert_close(value, expected, **TOLERANCE[dtype], msg=lambda m, key=key: f"{key}: {m}")
        else:
            err = (value.float() - expected).abs().max().item()
            torch_err = (baseline[key].float() - expected).abs().max().item()
            slack = TOLERANCE[dtype]["atol"]
            if dtype == torch.bfloat16:
                # the interpreter stores fp32 -> bf16 rounded toward zero (GPUs round to nearest): the
                # bias can add up over the steps, so one ulp of slack per step that stored the state
                slack += bf16_ulp(expected) * (steps if triton_interpreting() else 1)
            assert err <= 2 * torch_err + slack, f"{key} ({dtype}): error {err:.3g} vs torch's {torch_err:.3g}"


@interpreted
@pytest.mark.parametrize("use_master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_matches_reference(op, dtype, use_master):
    data = make_data((2, 300))
    got = run_op(op, "triton", data, dtype, use_master)
    baseline = None if dtype == torch.float32 else run_op(op, "torch", data, dtype, use_master)
    check_against_reference(got, run_reference(op, data, dtype), dtype, baseline)
    for key in ("z", "m", "v", "y"):
        if key in got:
            assert got[key].dtype == dtype
    if use_master:
        assert is_rounding_of(got["master"], got["y" if op == "km" else "z"])


@interpreted
@pytest.mark.parametrize("shape", [(1, 1), (1, 9973), (3, 96), (3, 65537)], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_odd_sizes(op, shape):
    """1 element, a prime numel, a non-power-of-2 row, B > 1 with a prime row spanning two blocks."""
    data = make_data(shape, steps=2)
    ref = run_reference(op, data, torch.float32, steps=2)
    check_against_reference(run_op(op, "triton", data, torch.float32, False, steps=2), ref, torch.float32)
    check_against_reference(run_op(op, "triton", data, torch.float32, True, steps=2), ref, torch.float32)


@interpreted
@pytest.mark.parametrize("op", OPS)
def test_many_blocks_and_strided_norms(op, monkeypatch):
    """Small blocks (several partial sums per sample) and a non-contiguous ``sq_norm`` output."""
    monkeypatch.setattr(_triton, "INTERPRET_BLOCK", 16)
    data = make_data((3, 37))
    check_against_reference(run_op(op, "triton", data, torch.float32, True), run_reference(op, data, torch.float32),
                            torch.float32)
    out = torch.full((3, 2), -1.0)
    z = data["z"].clone()
    fsm_residual_step(data["edz"][0].clone(), data["e_x"], z, out[:, 0], step_table("fsm"),
                      torch.zeros(1, dtype=torch.int64), backend="triton")
    torch.testing.assert_close(out[:, 0], (data["edz"][0] - data["e_x"]).square().sum(1), rtol=NORM_RTOL, atol=0)
    assert torch.equal(out[:, 1], torch.full((3,), -1.0))


@interpreted
def test_strided_norms_of_a_single_block():
    """One block per sample writes the norms directly only into a contiguous ``sq_norm``: a strided one goes
    through the partial sums, each sample's norm into its own element."""
    data = make_data((3, 37))
    out = torch.full((3, 2), -1.0)
    fsm_residual_step(data["edz"][0].clone(), data["e_x"], data["z"].clone(), out[:, 0], step_table("fsm"),
                      torch.zeros(1, dtype=torch.int64), backend="triton")
    torch.testing.assert_close(out[:, 0], (data["edz"][0] - data["e_x"]).square().sum(1), rtol=NORM_RTOL, atol=0)
    assert torch.equal(out[:, 1], torch.full((3,), -1.0))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=interpreted)])
@pytest.mark.parametrize("op", OPS)
def test_zero_elements_per_sample_give_zero_norms(op, backend):
    """Latents ``(B, 0)``: nothing to update, and every norm is 0 (not what ``sq_norm`` held before)."""
    z, sq, step = torch.zeros(3, 0), torch.full((3,), 7.0), torch.zeros(1, dtype=torch.int64)
    e = lambda: torch.zeros(3, 0)
    if op == "adam":
        adam_residual_step(e(), e(), z, e(), e(), sq, step_table(op), step, eps=1e-8, backend=backend)
    elif op == "fsm":
        fsm_residual_step(e(), e(), z, sq, step_table(op), step, backend=backend)
    else:
        km_residual_step(e(), e(), e(), z, sq, step_table(op), step, alpha=ALPHA, backend=backend)
    assert torch.equal(sq, torch.zeros(3))


def test_batch_limit_of_the_grid(monkeypatch):
    """At most ``MAX_BATCH`` samples per launch (CUDA's second grid dimension): one more is a ValueError."""
    monkeypatch.setattr(_triton, "MAX_BATCH", 2)
    table, step = step_table("fsm"), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="at most 2 samples per call, got 3"):
        _triton.fsm(torch.ones(3, 4), torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3), table, step, None)
    if triton_interpreting():
        sq = torch.zeros(2)
        _triton.fsm(torch.ones(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), sq, table, step, None)
        assert torch.equal(sq, torch.full((2,), 4.0))
        # the dispatcher knows it, so backend="auto" (on a GPU without the extension) falls back to torch
        too_many = backend_problem("triton", torch.ones(3, 4))
        assert too_many == "the Triton kernels take at most 2 samples per call, not 3"
        assert backend_problem("triton", torch.ones(2, 4)) is None


@pytest.mark.parametrize("use_master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("op", OPS)
def test_torch_backend_matches_reference_in_fp32(op, use_master):
    """The torch backend, with and without the fp32 master copy, against ``reference.py`` (state and norms)."""
    data = make_data((2, 300))
    got, ref = run_op(op, "torch", data, torch.float32, use_master), run_reference(op, data, torch.float32)
    for key, value in got.items():
        assert torch.allclose(value, ref[key], rtol=1e-6, atol=1e-7), key


@interpreted
def test_table_is_read_at_launch():
    """Step sizes come from the device table at row ``step``: editing the table in place (as before a
    CUDA-graph replay) changes the next step, with no Python float baked in."""
    data = make_data((2, 50))
    table, step = step_table("fsm"), torch.tensor([3])
    out = {}
    for rho in (0.25, 2.0):
        table[3, 0] = rho
        z, sq = data["z"].clone(), torch.zeros(2)
        fsm_residual_step(data["edz"][0].clone(), data["e_x"], z, sq, table, step, backend="triton")
        out[rho] = z
        torch.testing.assert_close(z, reference.fsm_update(data["z"], data["edz"][0] - data["e_x"], rho),
                                   **TOLERANCE[torch.float32])
    assert not torch.equal(out[0.25], out[2.0])


@interpreted
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs_are_rejected(op):
    z = torch.randn(8, 3).t()  # (3, 8), not contiguous
    c = lambda: torch.randn(3, 8)
    sq, step = torch.zeros(3), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="z must be contiguous"):
        if op == "adam":
            adam_residual_step(c(), c(), z, c(), c(), sq, step_table(op), step, eps=1e-8, backend="triton")
        elif op == "fsm":
            fsm_residual_step(c(), c(), z, sq, step_table(op), step, backend="triton")
        else:
            km_residual_step(c(), c(), c(), z, sq, step_table(op), step, alpha=ALPHA, backend="triton")
    master = torch.randn(8, 3).t()
    with pytest.raises(ValueError, match="master must be contiguous"):
        fsm_residual_step(c(), c(), c(), sq, step_table("fsm"), step, master=master, backend="triton")


@interpreted
@pytest.mark.parametrize("method,options", [("adam", {}), ("fsm", {"lr": 0.5}), ("km", {"lr": 0.7, "alpha": 0.3})])
def test_invert_triton_matches_torch(tiny_kl, images_32, method, options):
    kw = dict(method=method, steps=4, **options)
    ours = decinv_fast.invert(tiny_kl, images_32, backend="triton", **kw)
    theirs = decinv_fast.invert(tiny_kl, images_32, backend="torch", **kw)
    torch.testing.assert_close(ours.latents, theirs.latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.residual_history, theirs.residual_history, rtol=1e-5, atol=0)


def test_triton_without_interpreter_or_gpu_is_unavailable(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu = torch.zeros(2, 5)
    with pytest.raises(BackendUnavailable, match="need CUDA tensors"):
        resolve_backend("adam_residual_step", cpu, "triton")
    assert resolve_backend("adam_residual_step", cpu, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match="fsm_residual_step.*triton"):
        fsm_residual_step(cpu, cpu, cpu.clone(), torch.zeros(2), step_table("fsm"), torch.zeros(1, dtype=torch.int64),
                          backend="triton")


def test_float64_is_not_a_triton_dtype():
    with pytest.raises(BackendUnavailable, match="float64"):
        resolve_backend("fsm_residual_step", torch.zeros(2, 5, dtype=torch.float64), "triton")


def test_block_rule():
    assert _triton.block_config(1, 1, True) == (1, 1)
    assert _triton.block_config(9973, 2, True)[0] == 16384
    assert _triton.block_config(10**6, 2, True)[0] == _triton.INTERPRET_BLOCK >= 16384
    for n, batch in [(1, 1), (37, 3), (4 * 64 * 64, 1), (4 * 64 * 64, 16), (16 * 4 * 96 * 96, 8)]:
        block, warps = _triton.block_config(n, batch, False)
        assert block & (block - 1) == 0 and 128 <= block <= 4096 and 1 <= warps <= 8
        assert block <= max(128, _triton.next_power_of_2(n))
    assert _triton.block_config(4 * 64 * 64, 1, False) == (256, 1)
    assert _triton.block_config(16 * 4 * 96 * 96, 8, False) == (4096, 8)
    # the tiers switch at B*n = 2**17 and 2**22 exactly (B*n below the limit keeps the smaller block)
    assert _triton.block_config(1 << 16, 2, False) == (1024, 4)
    assert _triton.block_config((1 << 17) - 1, 1, False) == (256, 1)
    assert _triton.block_config(1 << 21, 2, False) == (4096, 8)
    assert _triton.block_config((1 << 22) - 1, 1, False) == (1024, 4)


def test_import_does_not_load_triton_backend():
    code = ("import sys, decinv_fast; "
            "assert 'decinv_fast.ops._triton' not in sys.modules and 'decinv_fast.kernels' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.requires_cuda
@pytest.mark.parametrize("use_master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_cuda_matches_reference_and_torch(op, dtype, use_master):
    data = make_data((2, 4 * 64 * 64 + 3))
    got = run_op(op, "triton", data, dtype, use_master, device="cuda")
    baseline = run_op(op, "torch", data, dtype, use_master, device="cuda")
    ref = run_reference(op, data, dtype)
    check_against_reference(got, ref, dtype, None if dtype == torch.float32 else baseline)
    if dtype == torch.float32:  # CUDA's sqrt is correctly rounded, like the kernels' sqrt_rn
        for key, value in got.items():
            rtol = NORM_RTOL if key == "sq_norm" else TOLERANCE[dtype]["rtol"]
            torch.testing.assert_close(value, baseline[key], rtol=rtol, atol=TOLERANCE[dtype]["atol"])


@pytest.mark.requires_cuda
@pytest.mark.skipif(triton_interpreting(), reason="capturing needs compiled kernels: run with TRITON_INTERPRET=0")
def test_cuda_graph_replay_follows_the_schedule():
    """One captured Adam step, replayed with ``step`` advancing, equals the eager torch backend."""
    data = make_data((2, 4 * 32 * 32), steps=STEPS)
    eager = run_op("adam", "torch", data, torch.float32, False, device="cuda")
    dev = lambda t: t.to("cuda").clone()
    e_x, z, edz = dev(data["e_x"]), dev(data["z"]), torch.empty_like(dev(data["e_x"]))
    m, v, sq = torch.zeros_like(z), torch.zeros_like(z), torch.zeros(2, device="cuda")
    table, step = step_table("adam", "cuda"), torch.zeros(1, dtype=torch.int64, device="cuda")
    scratch = [t.clone() for t in (edz, z, m, v, sq)]  # compile outside the capture
    adam_residual_step(scratch[0], e_x, *scratch[1:], table, step, eps=1e-8, backend="triton")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        adam_residual_step(edz, e_x, z, m, v, sq, table, step, eps=1e-8, backend="triton")
    for k in range(STEPS):
        edz.copy_(data["edz"][k])
        step.fill_(k)
        graph.replay()
    torch.testing.assert_close(z.cpu(), eager["z"], **TOLERANCE[torch.float32])
    torch.testing.assert_close(sq.cpu(), eager["sq_norm"][-1], rtol=NORM_RTOL, atol=0)


def test_launch_makes_the_latents_device_current():
    """Triton launches on the current device's stream, so a launch for latents on another GPU must
    make their device current first (checked on the guard; the launch itself needs two GPUs)."""
    guard = _triton.on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(_triton.on_device(torch.device("cpu")), torch.cuda.device)


@pytest.mark.requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.skipif(triton_interpreting(), reason="runs the compiled kernels: run with TRITON_INTERPRET=0")
@pytest.mark.parametrize("op", OPS)
def test_triton_on_a_gpu_that_is_not_current(op):
    data = make_data((2, 4 * 32 * 32), steps=STEPS)
    expected = run_op(op, "torch", data, torch.float32, False)
    with torch.cuda.device(0):
        got = run_op(op, "triton", data, torch.float32, False, device="cuda:1")
    torch.testing.assert_close(got["z"].cpu(), expected["z"], **TOLERANCE[torch.float32])


COMPILE_FOR_GPU = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from decinv_fast.kernels.adam_residual_step import adam_residual_step_kernel
from decinv_fast.kernels.fsm_residual_step import fsm_residual_step_kernel
from decinv_fast.kernels.km_residual_step import km_residual_step_kernel

FP32 = {"master_ptr", "partial_ptr", "table_ptr"}
SCALARS = {"n": "i64", "n_blocks": "i64", "step_ptr": "*i64"}
for kernel in (adam_residual_step_kernel, fsm_residual_step_kernel, km_residual_step_kernel):
    for storage in ("*fp32", "*fp16", "*bf16"):
        signature = {}
        for name in kernel.arg_names:
            if name in ("HAS_MASTER", "BLOCK"):
                signature[name] = "constexpr"
            elif name in SCALARS:
                signature[name] = SCALARS[name]
            elif name.endswith("_ptr"):
                signature[name] = "*fp32" if name in FP32 else storage
            else:
                signature[name] = "fp32"
        for master in (False, True):
            source = ASTSource(fn=kernel, signature=signature, constexprs={"HAS_MASTER": master, "BLOCK": 1024})
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            assert ".entry" in compiled.asm["ptx"] and compiled.asm["cubin"], (kernel.__name__, storage, master)
print("compiled")
"""


def test_kernels_compile_for_a_gpu_without_one(tmp_path):
    """The interpreter runs the kernels as Python; this compiles them the real way (PTX and cubin for
    sm_90, every storage dtype, with and without the master copy), which needs no GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_GPU], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
