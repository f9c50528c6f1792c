"""The update-op launchers (``decinv_fast/ops/*_residual_step.py``) and their backends on the CPU,
against an oracle made of ``reference.py``'s update functions; from a mutation audit.

Pinned down here: every latent and step argument is checked (shape, dtype, device, contiguity,
naming the argument), the torch and reference backends give the oracle's state, master copy and
norms bit for bit in every dtype, with and without the fp32 master copy, the Triton kernels and the
``cuda`` backend's calls get the caller's ``betas`` / ``eps`` / ``alpha`` / ``master`` (not the
defaults), and the interpreter's block size is the documented one.
"""

import sys

import pytest
import torch
from conftest import TOLERANCE
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from update_cases import correctly_rounded_sqrt

from decinv_fast import reference
from decinv_fast._dispatch import BackendUnavailable, triton_interpreting
from decinv_fast.ops import _cuda, _library, _torch, _triton, adam_residual_step, fsm_residual_step, km_residual_step

OPS = ("adam", "fsm", "km")
LATENTS = {"adam": ("edz", "e_x", "z", "m", "v"), "fsm": ("edz", "e_x", "z"), "km": ("edz", "e_x", "y", "z")}
# none of them the defaults, so that a launcher or backend falling back on one is seen
BETAS, EPS, ALPHA = (0.8, 0.95), 3e-3, 0.45
START, STEPS = 2, 3  # table rows 2..4: every step reads another row
SHAPE = (2, 37)

interpreted = pytest.mark.skipif(not triton_interpreting(), reason="CPU tests need TRITON_INTERPRET=1")


def table_for(op: str, dtype: torch.dtype = torch.float32, betas=BETAS) -> torch.Tensor:
    """The loop's per-step table (``(lr_k, 1-b1^(k+1), 1-b2^(k+1))`` for Adam, ``(rho_k,)`` else) in
    the update math dtype of ``dtype`` latents."""
    rates = [0.05 * (1 + k) for k in range(8)] if op == "adam" else [0.3 + 0.1 * k for k in range(8)]
    b1, b2 = betas
    rows = [(r, 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)) if op == "adam" else (r,) for k, r in enumerate(rates)]
    return torch.tensor(rows, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def make_state(op: str, dtype: torch.dtype, master: bool, seed: int = 0) -> tuple[dict, torch.Tensor, list]:
    """``(state, e_x, edzs)``: ``z`` (and ``m``, ``v`` or ``y``) in ``dtype``, the fp32 master copy of ``z``
    (of ``y`` for KM) when asked, and one ``edz`` per step."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda scale=1.0: (scale * torch.randn(SHAPE, generator=gen, dtype=torch.float64)).to(dtype)  # noqa: E731
    e_x = rand()
    state = {"z": e_x + rand(0.1)}
    if op == "adam":
        state.update(m=rand(0.01), v=rand(0.01).abs())
    if op == "km":
        state["y"] = state["z"] + rand(0.05)
    if master:
        # a master copy that is not the rounded iterate, so that reading the stored one instead shows
        state["master"] = state["y" if op == "km" else "z"].float() + 1e-3 * torch.randn(SHAPE, generator=gen)
    return state, e_x, [e_x + rand(0.5) for _ in range(STEPS)]


def oracle_step(op: str, state: dict, edz, e_x, k: int, table, betas=BETAS) -> torch.Tensor:
    """One step of ``reference.py``'s update on ``state`` in place: in the latents' dtype, or in fp32
    when there is a master copy (stored back into every buffer in its own dtype). Returns the norms."""
    math = torch.float32 if "master" in state else state["z"].dtype
    row = table[k].tolist()
    g = edz.to(math) - e_x.to(math)
    if op == "km":
        point = state["master"] if "master" in state else state["y"]
        z_new = reference.fsm_update(point.to(math), g, row[0])
        y = reference.km_extrapolate(z_new, state["z"].to(math), ALPHA)
        for key in ("y", "master"):
            if key in state:
                state[key].copy_(y)
        state["z"].copy_(z_new)
    else:
        base = (state["master"] if "master" in state else state["z"]).to(math)
        if op == "adam":
            z, m, v = reference.adam_update(base, state["m"].to(math), state["v"].to(math), g, k, row[0], EPS, betas)
            state["m"].copy_(m), state["v"].copy_(v)
        else:
            z = reference.fsm_update(base, g, row[0])
        for key in ("z", "master"):
            if key in state:
                state[key].copy_(z)
    return g.float().square().sum(1)


def launch(op: str, state: dict, edz, e_x, sq_norm, table, step, backend: str, **extra) -> None:
    master = state.get("master")
    if op == "adam":
        kw = dict(eps=EPS, betas=BETAS) | extra
        adam_residual_step(edz, e_x, state["z"], state["m"], state["v"], sq_norm, table, step, master=master,
                           backend=backend, **kw)
    elif op == "fsm":
        fsm_residual_step(edz, e_x, state["z"], sq_norm, table, step, master=master, backend=backend, **extra)
    else:
        km_residual_step(edz, e_x, state["y"], state["z"], sq_norm, table, step, alpha=ALPHA, master=master,
                         backend=backend, **extra)


def run_both(op: str, dtype: torch.dtype, master: bool, backend: str, **extra) -> tuple[dict, dict, list, list]:
    """``STEPS`` steps from table row ``START`` with ``backend`` and with the oracle: both states and
    both lists of norms."""
    state, e_x, edzs = make_state(op, dtype, master)
    expected = {key: t.clone() for key, t in state.items()}
    table = table_for(op, dtype, extra.get("betas", BETAS))
    step = torch.tensor([START])
    got_norms, want_norms = [], []
    for k, edz in enumerate(edzs, START):
        step.fill_(k)
        sq_norm = torch.full((SHAPE[0],), float("nan"))
        launch(op, state, edz.clone(), e_x, sq_norm, table, step, backend, **extra)
        got_norms.append(sq_norm)
        want_norms.append(oracle_step(op, expected, edz, e_x, k, table, extra.get("betas", BETAS)))
    assert int(step) == START + STEPS - 1  # the launchers do not advance the counter
    return state, expected, got_norms, want_norms


CASES = [(torch.float32, False), (torch.float16, False), (torch.bfloat16, False), (torch.float64, False),
         (torch.float16, True), (torch.bfloat16, True), (torch.float32, True)]


@pytest.mark.parametrize("dtype,master", CASES, ids=lambda c: str(c).removeprefix("torch."))
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("op", OPS)
def test_torch_and_reference_backends_are_the_oracle_bit_for_bit(op, backend, dtype, master):
    """State (``z``, ``m``, ``v``, ``y``), master copy and per-sample norms, every step, exactly."""
    state, expected, got_norms, want_norms = run_both(op, dtype, master, backend)
    for key, value in state.items():
        assert value.dtype == expected[key].dtype, key
        off = (value.double() - expected[key].double()).abs().max()
        assert torch.equal(value, expected[key]), f"{key}: off by {off}"
    for k, (got, want) in enumerate(zip(got_norms, want_norms, strict=True)):
        assert torch.equal(got, want), f"sq_norm of step {k}: {got} != {want}"


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("op", OPS)
def test_torch_backend_reads_the_step_on_the_device(op, master):
    """No host sync (what CUDA-graph capture needs): the torch backend runs on fake tensors, which have no
    values to read, where the reference backend, which reads ``step`` on the host, cannot."""
    with FakeTensorMode():
        state = {key: torch.zeros(SHAPE, dtype=torch.float16) for key in LATENTS[op] if key not in ("edz", "e_x")}
        if master:
            state["master"] = torch.zeros(SHAPE)
        args = (torch.zeros(SHAPE, dtype=torch.float16), torch.zeros(SHAPE, dtype=torch.float16))
        table, step = table_for(op), torch.zeros(1, dtype=torch.int64)
        launch(op, state, *args, torch.zeros(SHAPE[0]), table, step, "torch")
        with pytest.raises(DataDependentOutputException):
            launch(op, state, *args, torch.zeros(SHAPE[0]), table, step, "reference")
        assert state["z"].shape == SHAPE


@pytest.mark.parametrize("backend", ["torch", "reference", pytest.param("triton", marks=interpreted)])
@pytest.mark.parametrize("op", OPS)
def test_the_requested_backend_is_the_one_that_runs(op, backend, monkeypatch):
    """An explicit backend runs that implementation (and no other), though all give the same numbers."""
    calls = []

    def spy(module, name, label):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: calls.append(label) or original(*a, **k))

    spy(_torch, op, "torch")
    spy(_triton, op, "triton")
    spy(reference, "adam_update" if op == "adam" else "fsm_update", "reference")
    state, e_x, edzs = make_state(op, torch.float32, False)
    launch(op, state, edzs[0], e_x, torch.zeros(SHAPE[0]), table_for(op), torch.tensor([START]), backend)
    assert calls == [backend]


@pytest.mark.parametrize("backend", ["torch", "reference", pytest.param("triton", marks=interpreted)])
def test_adam_s_default_betas_are_the_reference_s(backend):
    state, e_x, edzs = make_state("adam", torch.float32, False)
    expected = {key: t.clone() for key, t in state.items()}
    table, step = table_for("adam", betas=reference.ADAM_BETAS), torch.tensor([START])
    for k, edz in enumerate(edzs, START):
        step.fill_(k)
        adam_residual_step(edz.clone(), e_x, state["z"], state["m"], state["v"], torch.zeros(SHAPE[0]), table, step,
                           eps=EPS, backend=backend)  # betas left out
        with correctly_rounded_sqrt():
            oracle_step("adam", expected, edz, e_x, k, table, reference.ADAM_BETAS)
    for key in ("z", "m", "v"):
        torch.testing.assert_close(state[key], expected[key], **TOLERANCE[torch.float32])


@interpreted
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.float32, True), (torch.float16, True)],
                         ids=["fp32", "fp32-master", "fp16-master"])
@pytest.mark.parametrize("op", OPS)
def test_triton_gets_the_callers_settings(op, dtype, master):
    """The Triton kernels with non-default ``betas``, ``eps`` and ``alpha``, a master copy that differs
    from the stored iterate and a step index past 0: fp32 math as the oracle's (sqrt correctly rounded,
    as ``sqrt_rn``), within a rounding of the storage dtype."""
    with correctly_rounded_sqrt():
        state, expected, got_norms, want_norms = run_both(op, dtype, master, "triton")
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else dict(rtol=torch.finfo(dtype).eps, atol=1e-6)
    for key, value in state.items():
        assert value.dtype == expected[key].dtype, key
        torch.testing.assert_close(value, expected[key], **tol, msg=lambda m, key=key: f"{key}: {m}")
    for got, want in zip(got_norms, want_norms, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


class CudaOpsOnTheCpu:
    """``torch.ops.decinv_fast`` as the ``cuda`` backend calls it, run by the torch backend: each call is
    first checked against its schema's fake implementation, then its arguments are read in the
    schema's order, so a call that passes them in another order computes something else."""

    @staticmethod
    def adam_residual_step(*args):
        _library.FAKES["adam_residual_step"](*args)
        edz, e_x, z, m, v, sq_norm, table, step, master, eps, b1, b2 = args
        _torch.adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, (b1, b2))

    @staticmethod
    def fsm_residual_step(*args):
        _library.FAKES["fsm_residual_step"](*args)
        _torch.fsm(*args)

    @staticmethod
    def km_residual_step(*args):
        _library.FAKES["km_residual_step"](*args)
        _torch.km(*args)


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.float16, True)], ids=["fp32", "fp16-master"])
@pytest.mark.parametrize("op", OPS)
def test_cuda_backend_passes_the_arguments_in_the_schema_s_order(op, dtype, master, monkeypatch):
    """The launchers send ``backend='cuda'`` to ``ops/_cuda.py``, which calls the op with the caller's
    ``master``, ``eps``, ``betas`` and ``alpha`` where the schema has them (no GPU: the op is stood in for)."""
    monkeypatch.setattr(_cuda, "_ops", lambda: CudaOpsOnTheCpu)
    module = sys.modules[f"decinv_fast.ops.{op}_residual_step"]
    monkeypatch.setattr(module, "resolve_backend", lambda name, tensor, backend: backend)
    state, expected, got_norms, want_norms = run_both(op, dtype, master, "cuda")
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    for got, want in zip(got_norms, want_norms, strict=True):
        assert torch.equal(got, want)


def test_cuda_backend_without_the_extension_says_why(monkeypatch):
    monkeypatch.setattr(_cuda, "extension_error", lambda: "decinv_fast._C is not built")
    with pytest.raises(BackendUnavailable, match="decinv_fast._C is unavailable: decinv_fast._C is not built"):
        _cuda._ops()
    monkeypatch.setattr(_cuda, "extension_error", lambda: None)
    assert _cuda._ops() is torch.ops.decinv_fast


def latent_args(op: str, dtype=torch.float32, shape=SHAPE, **override) -> dict:
    """Valid launcher arguments for ``op`` (``override`` replaces any of them)."""
    args = {key: torch.zeros(shape, dtype=dtype) for key in LATENTS[op]}
    args.update(sq_norm=torch.zeros(shape[0]), table=table_for(op, dtype), step=torch.zeros(1, dtype=torch.int64),
                master=None)
    args.update(override)
    return args


def call(op: str, args: dict, backend: str = "torch") -> None:
    a = dict(args)
    tail = dict(sq_norm=a.pop("sq_norm"), table=a.pop("table"), step=a.pop("step"))
    kw = dict(master=a.pop("master"), backend=backend)
    if op == "adam":
        adam_residual_step(*a.values(), *tail.values(), eps=EPS, **kw)
    elif op == "fsm":
        fsm_residual_step(*a.values(), *tail.values(), **kw)
    else:
        km_residual_step(*a.values(), *tail.values(), alpha=ALPHA, **kw)


LATENT_CASES = [(op, key) for op in OPS for key in LATENTS[op]]


@pytest.mark.parametrize("op,key", LATENT_CASES, ids=lambda c: str(c))
def test_every_latent_argument_is_checked(op, key):
    """Each latent buffer must match ``z`` in shape, dtype and device and be contiguous; the error names it
    (a wrong ``z`` is named through the first buffer that does not match it)."""
    named = "edz" if key == "z" else key
    for tensor in (torch.zeros(2, 38), torch.zeros(SHAPE, dtype=torch.float64), torch.zeros(SHAPE, device="meta")):
        with pytest.raises(ValueError, match=f"{named} must match the latents"):
            call(op, latent_args(op, **{key: tensor}))
    with pytest.raises(ValueError, match=f"{key} must be contiguous"):
        call(op, latent_args(op, **{key: torch.zeros(37, 2).t()}))


STEP_CASES = [  # (argument, bad value for fp32 latents of SHAPE, message)
    ("sq_norm", torch.zeros(SHAPE[0], dtype=torch.float64), "sq_norm must be float32 of shape"),
    ("sq_norm", torch.zeros(SHAPE[0] + 1), "sq_norm must be float32 of shape"),
    ("sq_norm", torch.zeros(SHAPE[0], device="meta"), "sq_norm must be float32 of shape"),
    ("table", "float64", "table must be float32"),
    ("table", "1d", "table must be float32"),
    ("table", "3d", "table must be float32"),
    ("table", "columns", "table must be float32"),
    ("table", "meta", "table must be float32"),
    ("table", "strided", "table must be contiguous"),
    ("step", torch.zeros(1, dtype=torch.int32), "step must be a one-element int64"),
    ("step", torch.zeros(2, dtype=torch.int64), "step must be a one-element int64"),
    ("step", torch.zeros(1, dtype=torch.int64, device="meta"), "step must be a one-element int64"),
    ("master", torch.zeros(SHAPE, dtype=torch.float64), "master must be float32"),
    ("master", torch.zeros(2, 38), "master must be float32"),
    ("master", torch.zeros(SHAPE, device="meta"), "master must be float32"),
    ("master", torch.zeros(37, 2).t(), "master must be contiguous"),
]


def bad_table(op: str, how: str) -> torch.Tensor:
    good = table_for(op)
    return {"float64": good.double(), "1d": good[:, 0].contiguous(), "3d": good.unsqueeze(0), "meta": good.to("meta"),
            "columns": torch.zeros(8, 2 if op == "adam" else 3),
            "strided": torch.zeros(8, 2 * good.shape[1])[:, ::2]}[how]


@pytest.mark.parametrize("case", range(len(STEP_CASES)))
@pytest.mark.parametrize("op", OPS)
def test_every_step_argument_is_checked(op, case):
    key, value, message = STEP_CASES[case]
    if key == "table":
        value = bad_table(op, value)
    with pytest.raises(ValueError, match=message):
        call(op, latent_args(op, **{key: value}))


@pytest.mark.parametrize("op", OPS)
def test_the_table_follows_the_latents_math_dtype(op):
    """fp64 latents take a fp64 table (their update math), every other dtype a fp32 one."""
    with pytest.raises(ValueError, match="table must be float64 .* for float64 latents"):
        call(op, latent_args(op, torch.float64, table=table_for(op)))
    with pytest.raises(ValueError, match="table must be float32 .* for float16 latents"):
        call(op, latent_args(op, torch.float16, table=table_for(op, torch.float64)))
    call(op, latent_args(op, torch.float64))
    call(op, latent_args(op, torch.bfloat16))


@pytest.mark.parametrize("op", OPS)
def test_latents_are_two_dimensional_and_floating(op):
    for shape in [(2, 3, 4), (6,)]:
        with pytest.raises(ValueError, match=r"viewed as \(B, elements per sample\)"):
            call(op, latent_args(op, shape=shape))
    args = {key: torch.zeros(SHAPE, dtype=torch.int32) for key in LATENTS[op]}
    with pytest.raises(TypeError, match="latents must be one of"):
        call(op, latent_args(op, **args))


@pytest.mark.parametrize("op,key", [("adam", "m"), ("adam", "v"), ("km", "y")])
def test_fake_implementation_checks_every_latent(op, key):
    """The ``torch.library`` fake implementations (what ``torch.compile`` traces with) check each
    latent of the schema, as the launchers do."""
    args = latent_args(op, shape=(2, 5), **{key: torch.empty(2, 6)})
    args = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    positional = [args[k] for k in LATENTS[op]] + [args["sq_norm"], args["table"], args["step"], None]
    scalars = {"adam": (EPS, *BETAS), "fsm": (), "km": (ALPHA,)}[op]
    with pytest.raises(ValueError, match=f"{key} must match"):
        getattr(torch.ops.decinv_fast, f"{op}_residual_step")(*positional, *scalars)


def test_interpreter_block_is_the_documented_one():
    """Under the interpreter a block is ``min(65536, next_power_of_2(n))`` elements, with one warp."""
    assert _triton.INTERPRET_BLOCK == 65536
    assert _triton.block_config(10**6, 1, True) == (65536, 1)
    assert _triton.block_config(40000, 3, True) == (65536, 1)
    assert _triton.block_config(65537, 1, True) == (65536, 1)
    assert _triton.block_config(300, 2, True) == (512, 1)


class RecordingKernel:
    """Stands in for a compiled (not interpreted) Triton kernel: records each launch's grid, arguments and
    options instead of running."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **options: self.launches.append((grid, args, options))


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("batch,n,block,warps", [(1, 4 * 64 * 64, 256, 1), (2, 300, 256, 1), (3, 1 << 16, 1024, 4),
                                                    (2, 1 << 21, 4096, 8)])
def test_gpu_launch_follows_the_block_rule_without_fp_fusion(batch, n, block, warps, master):
    """What a GPU launch gets (no GPU needed): the GPU block tier, not the interpreter's, the grid
    ``(cdiv(n, BLOCK), B)``, the master copy (or ``z`` as a placeholder) and no FMA contraction."""
    kernel = RecordingKernel()
    z, sq_norm = torch.empty(batch, n), torch.zeros(batch)
    copy = torch.empty(batch, n) if master else None
    _triton._launch(kernel, z, sq_norm, copy, (z,), ("table", "step"), (0.5,))
    [(grid, args, options)] = kernel.launches
    n_blocks = -(-n // block)
    assert grid == (n_blocks, batch)
    assert options == dict(HAS_MASTER=master, BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    assert args[0] is z and args[1] is (copy if master else z)
    assert args[3:] == ("table", "step", n, n_blocks, 0.5)
    assert args[2].shape == (batch, n_blocks) and args[2].dtype == torch.float32


def test_no_launch_for_empty_samples():
    """Latents ``(B, 0)``: the launcher zeroes the norms and returns without a launch (nothing to do)."""
    kernel = RecordingKernel()
    sq_norm = torch.full((3,), 7.0)
    _triton._launch(kernel, torch.zeros(3, 0), sq_norm, None, (), (), ())
    assert kernel.launches == []
    assert torch.equal(sq_norm, torch.zeros(3))
