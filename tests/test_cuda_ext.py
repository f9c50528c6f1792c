"""The ``cuda`` backend: op schemas and fake implementations (run anywhere), the compiled extension
(``requires_ext``) and the kernels themselves against the torch backend (``requires_cuda``)."""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch
from conftest import TOLERANCE
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from update_cases import (
    ALPHA,
    BETAS,
    METHODS,
    cast_state,
    correctly_rounded_sqrt,
    make_case,
    max_error,
    op_args,
    ref_step,
    step_table,
    storage_ulp,
)

from decinv_fast import _dispatch, reference
from decinv_fast._dispatch import BackendUnavailable, resolve_backend
from decinv_fast._extension import extension_error
from decinv_fast.ops import _library, adam_residual_step, fsm_residual_step, km_residual_step

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MUTATED = {
    "adam_residual_step": {"z", "m", "v", "sq_norm", "master"},
    "fsm_residual_step": {"z", "sq_norm", "master"},
    "km_residual_step": {"y", "z", "sq_norm", "master"},
}


def op(method: str):
    return getattr(torch.ops.decinv_fast, f"{method}_residual_step")


def empty_args(method, shape=(2, 5), dtype=torch.float32, device="meta", with_master=False, **override):
    """Arguments of the op on uninitialised tensors; ``override`` replaces state entries or
    ``edz`` / ``e_x`` / ``sq_norm`` / ``table`` / ``step``."""
    new = lambda dt=dtype: torch.empty(shape, dtype=dt, device=device)
    state = {"z": new()}
    if method == "adam":
        state.update(m=new(), v=new())
    if method == "km":
        state["y"] = new()
    if with_master:
        state["master"] = new(torch.float32)
    parts = dict(edz=new(), e_x=new(), sq_norm=torch.empty(shape[0], device=device),
                 table=torch.empty(4, 3 if method == "adam" else 1, device=device),
                 step=torch.zeros(1, dtype=torch.int64, device=device))
    for key, value in override.items():
        (state if key in ("z", "m", "v", "y", "master") else parts)[key] = value
    return op_args(method, state, parts["edz"], parts["e_x"], parts["sq_norm"], parts["table"], parts["step"], 1e-8)


# ---- schemas and fake implementations (no extension, no GPU needed) --------------------------

@pytest.mark.parametrize("method", METHODS)
def test_schemas_mark_what_is_written(method):
    schema = op(method).default._schema
    written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    assert written == MUTATED[f"{method}_residual_step"]
    assert len(schema.returns) == 0


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_meta_accepts_valid_inputs(method, dtype, master):
    assert op(method)(*empty_args(method, (3, 17), dtype, with_master=master)) is None


BAD = [  # (override builder, error type, message fragment)
    (lambda dt: dict(edz=torch.empty(2, 6, dtype=dt, device="meta")), ValueError, "edz must match"),
    (lambda dt: dict(e_x=torch.empty(2, 5, dtype=torch.float64, device="meta")), ValueError, "e_x must match"),
    (lambda dt: dict(edz=torch.empty(5, 2, dtype=dt, device="meta").t()), ValueError, "edz must be contiguous"),
    (lambda dt: dict(e_x=torch.empty(2, 5, dtype=dt)), ValueError, "e_x must match"),
    (lambda dt: dict(sq_norm=torch.empty(3, device="meta")), ValueError, "sq_norm must be float32 of shape"),
    (lambda dt: dict(table=torch.empty(4, 2, device="meta")), ValueError, "table must be float32"),
    (lambda dt: dict(step=torch.zeros(1, dtype=torch.int32, device="meta")), ValueError, "step must be"),
    (lambda dt: dict(step=torch.zeros(2, dtype=torch.int64, device="meta")), ValueError, "step must be"),
    (lambda dt: dict(master=torch.empty(2, 5, dtype=dt, device="meta")), ValueError, "master must be float32"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("method", METHODS)
def test_meta_rejects_bad_inputs(method, case):
    build, error, message = BAD[case]
    dtype = torch.float16  # so that a float32 master stands out from a wrong one
    with pytest.raises(error, match=message):
        op(method)(*empty_args(method, dtype=dtype, **build(dtype)))


def test_meta_km_checks_its_evaluation_point():
    """KM's ``y`` (written in place, like ``z``) must match the latents too."""
    with pytest.raises(ValueError, match="y must match"):
        op("km")(*empty_args("km", y=torch.empty(2, 6, device="meta")))


@pytest.mark.parametrize("method", METHODS)
def test_meta_rejects_what_the_kernels_do_not_take(method):
    with pytest.raises(TypeError, match="latents must be one of"):
        op(method)(*empty_args(method, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"viewed as \(B, elements per sample\)"):
        op(method)(*empty_args(method, shape=(2, 3, 4)))


@pytest.mark.parametrize("method", METHODS)
def test_fake_tensor_mode(method):
    with FakeTensorMode():
        assert op(method)(*empty_args(method, (2, 7), torch.bfloat16, device="cpu", with_master=True)) is None
        with pytest.raises(ValueError, match="z must match|edz must match"):
            op(method)(*empty_args(method, (2, 7), device="cpu", edz=torch.empty(2, 8)))


def test_traceable_with_fake_tensors():
    """make_fx (what torch.compile's tracing builds on) records the op without running a kernel."""
    def step_fn(edz, e_x, z, sq_norm, table, step):
        torch.ops.decinv_fast.fsm_residual_step(edz, e_x, z, sq_norm, table, step, None)
        return z

    args = [a for a in empty_args("fsm", (2, 7), device="cpu") if a is not None][:6]
    graph = make_fx(step_fn, tracing_mode="fake")(*args)
    assert "decinv_fast.fsm_residual_step" in graph.code


def test_defining_twice_is_safe():
    importlib.reload(_library)
    _library.define_ops()
    assert all(_library.is_defined(name) for name in _library.SCHEMAS)
    assert op("adam")(*empty_args("adam")) is None


# ---- the compiled extension --------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("DECINV_EXPECT_EXTENSION") != "1", reason="DECINV_EXPECT_EXTENSION is not 1")
def test_extension_was_built():
    """CI sets DECINV_EXPECT_EXTENSION=1 where nvcc exists: a build that silently fell back fails here."""
    assert extension_error() is None, f"decinv_fast._C did not load: {extension_error()}"


@pytest.mark.requires_ext
@pytest.mark.parametrize("name", sorted(MUTATED))
def test_extension_registers_cuda_kernels(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"decinv_fast::{name}", "CUDA")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"decinv_fast::{name}", "CPU")


@pytest.mark.requires_ext
@pytest.mark.parametrize("method", METHODS)
def test_cuda_backend_needs_cuda_tensors(method):
    e_x, init, edzs = make_case(method, (2, 7), torch.float32)
    with pytest.raises(BackendUnavailable, match="needs CUDA tensors"):
        call_launcher(method, cast_state(init, torch.float32), edzs[0], e_x, torch.empty(2), step_table(method),
                      torch.zeros(1, dtype=torch.int64), 1e-8, "cuda")
    with pytest.raises(NotImplementedError):
        op(method)(*empty_args(method, device="cpu"))


@pytest.fixture
def scripted_probe(monkeypatch):
    """A loaded extension whose launch probe does what the test says (no GPU needed)."""
    from decinv_fast import _extension

    monkeypatch.setattr(_extension, "extension_error", lambda: None)

    def script(probe):
        _dispatch.extension_launch_problem.cache_clear()
        monkeypatch.setattr(_dispatch, "probe_launch", probe)

    yield script
    _dispatch.extension_launch_problem.cache_clear()


def test_probe_launch_arguments_pass_the_ops_checks(monkeypatch):
    """The probe's one-element problem is valid input for the op (its fake implementation mirrors the
    kernels' checks): a probe that failed on its own arguments would send every GPU to Triton."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)  # no synchronize here
    with FakeTensorMode(allow_non_fake_inputs=True):
        _dispatch.probe_launch(torch.device("cuda", 0))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton to fall back to")
def test_kernels_built_for_other_gpus_fall_back_to_triton(scripted_probe):
    """An extension built for other architectures (e.g. sm_80/90 on a Turing or Blackwell card) is
    found out by one probe launch per device: auto takes Triton, an explicit 'cuda' says why."""
    with FakeTensorMode():
        z = torch.empty(2, 7, device="cuda")
    probes = []

    def no_kernel_image(device):
        probes.append(device)
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    scripted_probe(no_kernel_image)
    assert resolve_backend("adam_residual_step", z, "auto") == "triton"
    with pytest.raises(BackendUnavailable, match=r"do not launch on cuda:0 \(CUDA error: no kernel image.*\)"
                                                   r".*DECINV_CUDA_ARCHS"):
        resolve_backend("fsm_residual_step", z, "cuda")
    assert probes == [torch.device("cuda", 0)]  # once per device, whatever the op
    scripted_probe(lambda device: None)  # kernels that launch: the extension is the first choice
    assert resolve_backend("adam_residual_step", z, "auto") == "cuda"


# ---- the kernels on a GPU ----------------------------------------------------------------------

def call_launcher(method, state, edz, e_x, sq_norm, table, step, eps, backend):
    master = state.get("master")
    if method == "adam":
        adam_residual_step(edz, e_x, state["z"], state["m"], state["v"], sq_norm, table, step, eps=eps, betas=BETAS,
                           master=master, backend=backend)
    elif method == "fsm":
        fsm_residual_step(edz, e_x, state["z"], sq_norm, table, step, master=master, backend=backend)
    else:
        km_residual_step(edz, e_x, state["y"], state["z"], sq_norm, table, step, alpha=ALPHA, master=master,
                         backend=backend)


def run_backend(method, state, e_x, edzs, table, eps, backend):
    """All steps through the launcher on ``state`` in place; the per-step norms, stacked."""
    step = torch.zeros(1, dtype=torch.int64, device=e_x.device)
    norms = []
    for edz in edzs:
        sq_norm = torch.full((e_x.shape[0],), float("nan"), device=e_x.device)
        call_launcher(method, state, edz.clone(), e_x, sq_norm, table, step, eps, backend)
        norms.append(sq_norm)
        step += 1
    return torch.stack(norms)


def cuda_case(method, shape, dtype, master, seed=0):
    e_x, init, edzs = make_case(method, shape, dtype, seed)
    to = lambda t: t.cuda()
    return to(e_x), {k: to(t) for k, t in init.items()}, [to(t) for t in edzs], to(step_table(method))


@pytest.mark.requires_cuda
@pytest.mark.requires_ext
@pytest.mark.parametrize("shape", [(1, 1), (3, 1009), (2, 2 * 1024 * 1024 + 3), (70001, 3)],
                         ids=["1", "3x1009", "2x2M", "70001x3"])
@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_oracles(method, dtype, master, shape):
    e_x, init, edzs, table = cuda_case(method, shape, dtype, master)
    eps = reference.adam_eps(dtype)
    kernel = cast_state(init, dtype, master)
    norms = run_backend(method, kernel, e_x, edzs, table, eps, "cuda")

    # the kernels' own arithmetic: fp32 math on the widened state, each stored tensor rounded; on the
    # CPU, whose torch divides by a Python scalar exactly (CUDA torch multiplies by its reciprocal: an
    # ulp of the update, which the stored fp16/bf16 m, v and z carry on; seen on an H100)
    cpu = lambda t: t.cpu()
    oracle, oracle_norms = cast_state({k: cpu(t) for k, t in init.items()}, dtype, master), []
    with correctly_rounded_sqrt():
        for k, edz in enumerate(edzs):
            oracle_norms.append(ref_step(method, oracle, cpu(edz), cpu(e_x), k, table.cpu(), torch.float32, eps)
                                .float().square().sum(1))
    for key in oracle:
        assert torch.equal(cpu(kernel[key]), oracle[key]), f"{method} {key}: not the fp32-math/rounded-storage result"
    torch.testing.assert_close(norms.cpu(), torch.stack(oracle_norms), rtol=1e-5, atol=1e-30)

    if dtype == torch.float32 or master:  # the torch backend does the same fp32 math here
        same = cast_state(init, dtype, master)
        run_backend(method, same, e_x, edzs, table, eps, "torch")
        for key in same:
            torch.testing.assert_close(kernel[key], same[key], **TOLERANCE[dtype])
    else:  # 2x rule against the torch backend's same-precision arithmetic
        truth, same = cast_state(init, torch.float32), cast_state(init, dtype)
        for k, edz in enumerate(edzs):
            ref_step(method, truth, edz, e_x, k, table.cpu(), torch.float32, eps)
        run_backend(method, same, e_x, edzs, table, eps, "torch")
        bound = 2 * max_error(same, truth) + TOLERANCE[dtype]["atol"] + storage_ulp(truth["z"], dtype)
        assert max_error(kernel, truth) <= bound


@pytest.mark.requires_cuda
@pytest.mark.requires_ext
@pytest.mark.parametrize("method", METHODS)
def test_cuda_norms_are_deterministic(method):
    e_x, init, edzs, table = cuda_case(method, (2, 3 * 1024 * 1024 + 1), torch.float32, False)
    runs = [run_backend(method, cast_state(init, torch.float32), e_x, edzs, table, 1e-8, "cuda") for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.requires_cuda
@pytest.mark.requires_ext
@pytest.mark.parametrize("method", METHODS)
def test_cuda_graph_replay_matches_eager(method):
    """One captured step, replayed with the device step counter advanced inside the graph."""
    e_x, init, edzs, table = cuda_case(method, (2, 4099), torch.float16, True)
    eps = reference.adam_eps(torch.float16)
    eager = cast_state(init, torch.float16, True)
    eager_norms = run_backend(method, eager, e_x, [edzs[0]] * 5, table, eps, "cuda")

    graphed = cast_state(init, torch.float16, True)
    step = torch.zeros(1, dtype=torch.int64, device="cuda")
    sq_norm = torch.zeros(2, device="cuda")
    edz = edzs[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks; then undo it
        call_launcher(method, cast_state(init, torch.float16, True), edz, e_x, sq_norm, table, step, eps, "cuda")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call_launcher(method, graphed, edz, e_x, sq_norm, table, step, eps, "cuda")
        step.add_(1)
    norms = []
    for _ in range(5):
        graph.replay()
        norms.append(sq_norm.clone())
    assert int(step) == 5
    for key in eager:
        assert torch.equal(graphed[key], eager[key]), key
    assert torch.equal(torch.stack(norms), eager_norms)


@pytest.mark.requires_cuda
@pytest.mark.requires_ext
@pytest.mark.parametrize("method", METHODS)
def test_cuda_opcheck(method):
    e_x, init, edzs, table = cuda_case(method, (2, 33), torch.float32, True)
    state = cast_state(init, torch.float32, True)
    args = op_args(method, state, edzs[0], e_x, torch.empty(2, device="cuda"), table,
                   torch.zeros(1, dtype=torch.int64, device="cuda"), 1e-8)
    torch.library.opcheck(op(method).default, args)
