"""The update kernels: fused vs eager torch vs ``torch.optim.Adam(fused=True)`` + separate residual.

One gradient-free Adam step on latents ``(B, 4, 64, 64)`` fp32 (B = 1, 16), three ways:

* ``fused``: one pass reads ``edz, e_x, z, m, v`` and writes ``z, m, v`` (+ the per-sample norms). On
  the CPU this is the CUDA kernels' shared element math (``csrc/update_math.cuh``) compiled for the
  host exactly as ``tests/test_cuda_math_host.py`` builds it: a plain single-threaded loop with
  ``-O2 -ffp-contract=off``, a correctness build rather than a tuned CPU kernel. On a GPU: the CUDA
  extension and the Triton kernel.
* ``eager torch``: ``adam_residual_step(backend="torch")``, the engine's eager in-place ops.
* ``torch.optim.Adam(fused=True)``: PyTorch's fused Adam, plus the residual ``edz - e_x`` written into
  the gradient and a ``vector_norm`` for the monitoring norms (what a user of stock PyTorch would run).

Bytes moved per element are analytic: every op reads each distinct input tensor once and writes each
output once (allocations and views move nothing). They are counted from the ops actually dispatched
(a ``TorchDispatchMode`` over one step, using the ops' schemas to tell inputs from written arguments);
the host build's custom op and a Triton launch, which the mode cannot see, are counted from the fused
op's schema. CPU timings come from pytest-benchmark (``benchmarks/test_kernel_update.py``); on a GPU,
when one is available, from ``triton.testing.do_bench``. Results: ``benchmarks/results/kernels.json``.

    python -m benchmarks.kernels            # CPU (and GPU if present)
    python -m benchmarks.kernels --quick    # shorter timing rounds
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import harness
from benchmarks.common import arg_parser, quiet, save

BENCHMARK = "kernels"
LATENTS = ((1, 4, 64, 64), (16, 4, 64, 64))
BETAS, EPS, LR = (0.9, 0.999), 1e-8, 0.01
FUSED, EAGER, OPTIM = "fused", "eager torch", "torch.optim.Adam(fused=True) + residual + norm"
CPU_PROVIDERS = (FUSED, EAGER, OPTIM)
# schema arguments declared mutable that the op does not write in this use (no grad scaling / maximize)
NOT_WRITTEN = {"aten::_fused_adam_": {"grads"}}
ALLOCATION_ONLY = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::set_"}
HOST_NOTE = "CUDA element math compiled for the CPU (-O2 -ffp-contract=off, one thread): a correctness build"


@dataclass
class Provider:
    """One way to run the step: ``run()`` does one step on preallocated state; ``bypass`` lists
    ``(op, args)`` of custom ops the dispatch mode cannot see (counted from their schemas)."""

    name: str
    run: Callable[[], None]
    bypass: list = field(default_factory=list)
    count_dispatched: bool = True  # False: only ``bypass`` moves bytes (a Triton launch)


def make_state(latent: tuple[int, ...], device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batch, n = latent[0], int(torch.tensor(latent[1:]).prod())
    rand = lambda scale: (scale * torch.randn(batch, n, generator=gen)).to(device)
    e_x = rand(1.0)
    rates = [(LR, 1 - BETAS[0] ** (k + 1), 1 - BETAS[1] ** (k + 1)) for k in range(4)]
    return dict(edz=e_x + rand(0.1), e_x=e_x, z=e_x + rand(0.01), m=rand(0.01), v=rand(0.001).abs(),
                sq_norm=torch.zeros(batch, device=device), table=torch.tensor(rates, device=device),
                step=torch.zeros(1, dtype=torch.int64, device=device))


def host_ops():
    """``torch.ops.decinv_math_host`` built from ``tests/cpp/update_math_host.cpp`` (cached in build/)."""
    quiet()
    from torch.utils import cpp_extension

    build = harness.ROOT / "build" / "test_cuda_math_host"  # the same cached build as the tests
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name="decinv_math_host", sources=[str(harness.ROOT / "tests" / "cpp" / "update_math_host.cpp")],
                       extra_include_paths=[str(harness.ROOT / "csrc")], extra_cflags=["-O2", "-ffp-contract=off"],
                       build_directory=str(build), is_python_module=False)
    return torch.ops.decinv_math_host


def make_provider(name: str, latent: tuple[int, ...], device: str = "cpu") -> Provider:
    """The provider ``name`` (one of ``CPU_PROVIDERS``, or ``"cuda"`` / ``"triton"`` on a GPU)."""
    from decinv_fast.ops import adam_residual_step

    s = make_state(latent, device)
    if name == FUSED:
        op = host_ops().adam.default
        args = (s["edz"], s["e_x"], s["z"], s["m"], s["v"], s["sq_norm"], s["table"], s["step"], None, EPS, *BETAS)
        return Provider(name, lambda: op(*args), bypass=[(op, args)])
    if name in (EAGER, "cuda", "triton"):
        backend = "torch" if name == EAGER else name
        keys = ("edz", "e_x", "z", "m", "v", "sq_norm", "table", "step")
        run = lambda: adam_residual_step(*(s[k] for k in keys), eps=EPS, betas=BETAS, backend=backend)
        if name != "triton":
            return Provider(name, run)
        # a Triton launch is invisible to the dispatch mode: count it from the op schema all backends implement
        schema_op = torch.ops.decinv_fast.adam_residual_step.default
        return Provider(name, run, bypass=[(schema_op, (*(s[k] for k in keys), None, EPS, *BETAS))],
                        count_dispatched=False)
    if name == OPTIM:
        param = torch.nn.Parameter(s["z"])
        param.grad = torch.zeros_like(param)
        optimizer = torch.optim.Adam([param], lr=LR, betas=BETAS, eps=EPS, fused=True)
        norms = torch.zeros(latent[0], device=device)

        def run() -> None:
            torch.sub(s["edz"], s["e_x"], out=param.grad)
            torch.linalg.vector_norm(param.grad, dim=1, out=norms)
            optimizer.step()

        run()  # create the optimizer state outside the timing and the byte count
        return Provider(name, run)
    raise ValueError(f"unknown provider {name!r}")


class Traffic(TorchDispatchMode):
    """Bytes read and written by the ops dispatched inside the mode (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.account(func, args, kwargs or {}, out)
        return out

    def account(self, func, args, kwargs, out=None) -> None:
        schema = func._schema
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        if view or schema.name in ALLOCATION_ONLY or schema.name.startswith("profiler::"):
            return  # allocations and views move no data
        skip = NOT_WRITTEN.get(schema.name, set())
        seen: set[int] = set()
        read = written = 0
        values = dict(zip((a.name for a in schema.arguments), args, strict=False)) | kwargs
        for arg in schema.arguments:
            for t in _tensors(values.get(arg.name)):
                nbytes = t.numel() * t.element_size()
                mutated = arg.alias_info is not None and arg.alias_info.is_write and arg.name not in skip
                if arg.is_out:
                    written += nbytes
                    continue
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    read += nbytes
                if mutated:
                    written += nbytes
        results = out if isinstance(out, tuple | list) else (out,)
        for ret, value in zip(schema.returns, results, strict=False):
            if ret.alias_info is None:
                written += sum(t.numel() * t.element_size() for t in _tensors(value))
        self.ops.append((schema.name, read, written))


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def traffic(provider: Provider, elements: int) -> dict:
    """Analytic bytes of one step of ``provider``: per element, read/written, and the op count."""
    counter = Traffic()
    if provider.count_dispatched:
        with counter:
            provider.run()
    for op, args in provider.bypass:
        counter.account(op, args, {})
    read = sum(r for _, r, _ in counter.ops)
    written = sum(w for _, _, w in counter.ops)
    return dict(bytes_per_element=(read + written) / elements, read_bytes=read, written_bytes=written,
                ops_per_step=len(counter.ops), ops=[name for name, _, _ in counter.ops])


def cpu_records(quick: bool) -> list[dict]:
    """Run the pytest-benchmark file and turn its JSON into harness records (with the byte counts)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(Path(__file__).with_name("test_kernel_update.py")), "-q",
               "-p", "no:cacheprovider", f"--benchmark-json={out}", "--benchmark-warmup=on",
               "--benchmark-max-time=" + ("0.2" if quick else "1.0"),
               "--benchmark-min-rounds=" + ("5" if quick else "20")]
        proc = subprocess.run(cmd, cwd=harness.ROOT, capture_output=True, text=True)
        if not out.exists():
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise RuntimeError("pytest-benchmark wrote no results")
        data = json.loads(out.read_text())
    records = []
    for bench in data["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        latent = tuple(info["latent"])
        elements = int(torch.tensor(latent).prod())
        counts = traffic(make_provider(info["provider"], latent), elements)
        metrics = dict(seconds_min=stats["min"], seconds_median=stats["median"], rounds=stats["rounds"],
                       timing="pytest-benchmark", **counts,
                       effective_gbps=counts["bytes_per_element"] * elements / stats["median"] / 1e9)
        if info["provider"] == FUSED:
            metrics["note"] = HOST_NOTE
        records.append(harness.record(BENCHMARK, method="adam update", backend=info["provider"], dtype=torch.float32,
                                      shape=latent, device="cpu", metrics=metrics))
    return records


def gpu_records() -> list[dict]:
    """On a CUDA device: cuda, triton, eager torch and fused torch Adam, timed with ``do_bench``."""
    from triton.testing import do_bench

    from decinv_fast._dispatch import backend_problem

    records = []
    for latent in LATENTS:
        elements = int(torch.tensor(latent).prod())
        probe = torch.zeros(1, device="cuda")
        for name in ("cuda", "triton", EAGER, OPTIM):
            if name in ("cuda", "triton") and backend_problem(name, probe) is not None:
                print(f"GPU {name}: unavailable ({backend_problem(name, probe)})")
                continue
            provider = make_provider(name, latent, "cuda")
            counts = traffic(provider, elements)
            ms = do_bench(provider.run, warmup=25, rep=200, return_mode="median")
            metrics = dict(seconds_median=ms / 1e3, timing="triton.testing.do_bench (median)", **counts,
                           effective_gbps=counts["bytes_per_element"] * elements / (ms / 1e3) / 1e9)
            records.append(harness.record(BENCHMARK, method="adam update", backend=name, dtype=torch.float32,
                                          shape=latent, device="cuda", metrics=metrics))
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="shorter timing rounds")
    args = parser.parse_args(argv)
    records = cpu_records(args.quick)
    if torch.cuda.is_available():
        records += gpu_records()
    print(f"{'device':<8}{'provider':<50}{'latent':<16}{'median us':>11}{'B/elem':>8}{'ops':>5}{'GB/s':>7}")
    for r in records:
        m = r["metrics"]
        device = "cpu" if r["device"].startswith("cpu") else "cuda"
        print(f"{device:<8}{r['backend']:<50}{'x'.join(map(str, r['shape'])):<16}"
              f"{m['seconds_median'] * 1e6:>11.1f}{m['bytes_per_element']:>8.1f}{m['ops_per_step']:>5}"
              f"{m['effective_gbps']:>7.1f}")
    path = save(BENCHMARK, records, args.quick)
    print(f"wrote {len(records)} records to {path}")
    return records


if __name__ == "__main__":
    main()
