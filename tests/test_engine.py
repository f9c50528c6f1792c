"""The engine's run modes: graph-replayed static step, attention backends, fp32 master, compile."""

import copy
import dataclasses
import math
import warnings

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter
from decinv_fast.api import _frames_for, prepare_run
from decinv_fast.attention import attention_backend
from decinv_fast.graphs import EagerGraph, GraphedStep
from decinv_fast.loop import Plan, make_iteration


def _iteration(vae, x, method="adam", steps=8, lr=0.01, schedule="paper", **options):
    adapter = as_adapter(vae)
    frames = _frames_for(adapter, x, None)
    plan = Plan(method, steps, lr, schedule, options, "torch", frames.pixels.shape[0])
    return make_iteration(adapter, frames, plan)


@pytest.mark.parametrize("method,lr", [("adam", 0.01), ("fsm", 0.5), ("km", 0.5)])
def test_replayed_static_step_equals_reference(tiny_kl, images_32, method, lr):
    """The exact step a CUDA graph captures, warmed up, restored and replayed N times, equals the
    reference across changing learning rates and bias corrections, without re-capture."""
    steps = 8
    it = _iteration(tiny_kl, images_32, method, steps, lr, **({"alpha": 0.3} if method == "km" else {}))
    captured = []
    graphed = GraphedStep(it, capture=lambda fn, device: captured.append(fn) or EagerGraph(fn))
    assert graphed.captured and len(captured) == 1
    for _ in range(steps):
        graphed()
    a = as_adapter(tiny_kl)
    enc, dec = a.encode, (lambda z: a.decode(z, 1))
    if method == "adam":
        ref = reference.adam(enc, dec, images_32, steps=steps, lr=lr)
    elif method == "fsm":
        ref = reference.fsm(enc, dec, images_32, steps=steps, rho=lr, schedule="paper")
    else:
        ref = reference.km(enc, dec, images_32, steps=steps, rho=lr, alpha=0.3, schedule="paper")
    assert torch.equal(it.latents, ref.latents)
    assert int(it.step) == steps


def test_cuda_capture_runs_on_a_stream_of_the_latents_device(monkeypatch):
    """Capture makes the latents' device current and captures on a stream of that device, not on
    torch's process-wide capture stream (whose device is whichever was current at the first capture).
    CUDA's graph objects are replaced by recorders: the wiring is checked, not a real capture."""
    from decinv_fast import graphs

    events = []

    class Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            events.append(("current", self.device))

        def __exit__(self, *exc):
            events.append(("restored", self.device))

    class Capture:
        def __init__(self, graph, stream=None):
            self.stream = stream

        def __enter__(self):
            events.append(("capture on", self.stream))

        def __exit__(self, *exc):
            events.append(("capture end", None))

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: f"stream of {device}")
    monkeypatch.setattr(graphs, "_SIDE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    device = torch.device("cuda", 1)
    graph = graphs._capture_cuda(lambda: events.append(("step", None)), device)
    assert graph == "graph"
    assert events == [("current", device), ("capture on", f"stream of {device}"), ("step", None),
                      ("capture end", None), ("restored", device)]


def test_warm_ups_and_captures_reuse_one_stream_per_device_and_thread(monkeypatch):
    """cuBLAS keeps a workspace per stream for good: a new stream per call left 66 MiB behind every call on
    an H100. One stream per device and thread serves every warm-up and capture."""
    import threading

    from decinv_fast import graphs

    made = []
    monkeypatch.setattr(graphs, "_SIDE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or f"stream {len(made)}")
    first, second = torch.device("cuda", 0), torch.device("cuda", 1)
    assert graphs.side_stream(first) == graphs.side_stream(first) == "stream 1"
    assert graphs.side_stream(second) == "stream 2"
    other = []
    thread = threading.Thread(target=lambda: other.append(graphs.side_stream(first)))
    thread.start()
    thread.join()
    assert other == ["stream 3"] and graphs.side_stream(first) == "stream 1"
    assert made == [first, second, first]


def test_capture_of_a_vae_that_requires_grad(tiny_kl, images_32):
    """A VAE as ``from_pretrained`` gives it (parameters requiring grad), called outside ``no_grad``:
    the capture's warm-up must not run under autograd (it failed, and the run fell back to eager)."""
    vae = copy.deepcopy(tiny_kl).requires_grad_(True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        graphed = decinv_fast.invert(vae, images_32, steps=3, cuda_graphs=True)
    assert not [w for w in seen if "capture failed" in str(w.message)]
    assert torch.equal(graphed.latents, decinv_fast.invert(tiny_kl, images_32, steps=3).latents)


def test_failed_capture_falls_back_with_warning(tiny_kl, images_32):
    it = _iteration(tiny_kl, images_32, steps=4)

    def broken(fn, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.warns(RuntimeWarning, match="capture failed"):
        graphed = GraphedStep(it, capture=broken)
    assert not graphed.captured
    for _ in range(4):
        graphed()
    plain = decinv_fast.invert(tiny_kl, images_32, steps=4)
    assert torch.equal(it.latents, plain.latents)  # warm-up was undone before falling back


def test_capture_of_a_one_step_run_warms_up_once(tiny_kl, images_32):
    """Warm-up runs at most ``steps`` steps: a second one would write past the one-step history, the
    capture would fail and the run would fall back to eager."""
    it = _iteration(tiny_kl, images_32, steps=1)
    calls = []
    step = it.run_step
    it.run_step = lambda: calls.append(1) or step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphed = GraphedStep(it, capture=lambda fn, device: EagerGraph(fn))
    assert graphed.captured and len(calls) == 1
    graphed()
    assert torch.equal(it.latents, decinv_fast.invert(tiny_kl, images_32, steps=1).latents)


def test_a_warm_up_that_fails_midway_is_undone(tiny_kl, images_32):
    """The first warm-up step runs, the second raises: the run falls back to eager from the state
    before warm-up, not one step on."""
    it = _iteration(tiny_kl, images_32, steps=4)
    step, calls = it.run_step, []

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("operation not permitted when stream is capturing")
        step()

    it.run_step = flaky
    with pytest.warns(RuntimeWarning, match="capture failed"):
        graphed = GraphedStep(it, capture=lambda fn, device: EagerGraph(fn))
    assert not graphed.captured and len(calls) == 2
    for _ in range(4):
        graphed()
    assert torch.equal(it.latents, decinv_fast.invert(tiny_kl, images_32, steps=4).latents)


def test_invert_with_cuda_graphs_flag_on_cpu(tiny_kl, images_32):
    with pytest.warns(RuntimeWarning, match="no CUDA graphs; the step runs eagerly"):
        a = decinv_fast.invert(tiny_kl, images_32, steps=5, cuda_graphs=True)
    b = decinv_fast.invert(tiny_kl, images_32, steps=5)
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="cuda_graphs"):
        decinv_fast.invert(tiny_kl, images_32, method="grad", steps=1, cuda_graphs=True)


@pytest.mark.parametrize("method, options", [
    ("adam", {}), ("auto", {}), ("grad", {"clip_aware": True}),
    # a dtype other than the VAE's: the copy of the VAE is made for autograd, not as inference tensors
    ("grad", {"dtype": torch.float64}), ("grad", {"optimizer": "lbfgs", "dtype": torch.float64}),
])
def test_inside_inference_mode_and_no_grad(tiny_kl, images_32, method, options):
    """A pipeline's ``__call__`` runs under ``torch.inference_mode``/``no_grad``; every method gives the
    same bits there, grad included (it needs autograd for z alone)."""
    run = lambda x: decinv_fast.invert(tiny_kl, x, method=method, steps=3, **options).latents  # noqa: E731
    expected = run(images_32)
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            assert torch.equal(run(images_32.clone()), expected)  # images made in the context too


def test_attention_backends_set_verified_and_restored(tiny_kl, images_32):
    before = {k: type(p) for k, p in tiny_kl.attn_processors.items()}
    tiny_kl.set_attn_processor(AttnProcessor())  # a user's own choice must survive the call
    seen = {}

    def spy(name):
        return lambda k, z: seen.setdefault(name, {type(p) for p in tiny_kl.attn_processors.values()})

    out = {}
    for name in ("sdpa", "math"):
        out[name] = decinv_fast.invert(tiny_kl, images_32, steps=3, attention=name, callback=spy(name))
        assert all(type(p) is AttnProcessor for p in tiny_kl.attn_processors.values())
    assert seen == {"sdpa": {AttnProcessor2_0}, "math": {AttnProcessor}}
    torch.testing.assert_close(out["sdpa"].latents, out["math"].latents, rtol=1e-4, atol=1e-5)
    tiny_kl.set_attn_processor({k: cls() for k, cls in before.items()})


def test_auto_attention_keeps_the_vaes_own_processors(tiny_kl, images_32):
    """``"auto"`` touches a VAE already on fused (or custom) processors not at all, and swaps only the
    plain math processor, which materialises tokens x tokens, for SDPA during the call."""

    class Custom(AttnProcessor2_0):  # e.g. a user's hook around SDPA
        pass

    before = dict(tiny_kl.attn_processors)
    try:
        for installed, during in ((AttnProcessor2_0(), AttnProcessor2_0), (Custom(), Custom),
                                  (AttnProcessor(), AttnProcessor2_0)):
            tiny_kl.set_attn_processor(installed)
            objects = dict(tiny_kl.attn_processors)
            seen = set()
            watch = lambda k, z, seen=seen: seen.update(map(type, tiny_kl.attn_processors.values()))  # noqa: E731
            decinv_fast.invert(tiny_kl, images_32, steps=1, attention="auto", callback=watch)
            assert seen == {during}
            assert all(tiny_kl.attn_processors[k] is p for k, p in objects.items())  # the same objects after
    finally:
        tiny_kl.set_attn_processor(before)


def test_auto_attention_swaps_only_the_math_processors_of_a_mixed_vae(tiny_kl):
    class Custom(AttnProcessor2_0):
        pass

    before = dict(tiny_kl.attn_processors)
    names = sorted(before)
    assert len(names) >= 2
    try:
        mixed = {name: AttnProcessor() if i == 0 else Custom() for i, name in enumerate(names)}
        tiny_kl.set_attn_processor(mixed)
        with attention_backend(tiny_kl, "auto") as active:
            during = {k: type(p) for k, p in tiny_kl.attn_processors.items()}
        assert during == {name: AttnProcessor2_0 if i == 0 else Custom for i, name in enumerate(names)}
        assert active == "AttnProcessor2_0+Custom"
        assert all(tiny_kl.attn_processors[k] is p for k, p in mixed.items())  # put back afterwards
    finally:
        tiny_kl.set_attn_processor(before)


def test_attention_errors(tiny_kl, images_32):
    with pytest.raises(ValueError, match="attention"):
        decinv_fast.invert(tiny_kl, images_32, steps=1, attention="flash3")
    with pytest.raises(ValueError, match="xformers"):
        decinv_fast.invert(tiny_kl, images_32, steps=1, attention="xformers")


def test_attention_backend_names_an_unknown_backend_itself(tiny_kl):
    """``attention_backend`` checks the name before anything else, a model without attention layers
    included (not as 'xformers is not installed', which an unknown name would otherwise fall to)."""
    for module in (tiny_kl, None):
        with pytest.raises(ValueError, match="attention must be one of"):
            with attention_backend(module, "flash3"):
                pass


def test_xformers_on_cpu_tensors_is_refused(monkeypatch):
    """With xformers importable, the CPU still cannot run its kernel: the error names the device."""
    import diffusers.utils

    from decinv_fast import attention

    monkeypatch.setattr(diffusers.utils, "is_xformers_available", lambda: True)
    with pytest.raises(ValueError, match="needs CUDA tensors; the VAE is on cpu"):
        attention._processor("xformers", torch.device("cpu"))


def test_a_vae_that_ignores_the_processors_it_is_given_is_refused(tiny_kl, images_32):
    """The processors in use are checked after setting them: a VAE that keeps its own is an error,
    not a run on the wrong attention; its processors are left as they were."""
    vae = copy.deepcopy(tiny_kl)
    vae.set_attn_processor(AttnProcessor())
    vae.set_attn_processor = lambda processors: None  # e.g. a wrapper that does not pass it on
    with pytest.raises(RuntimeError, match="kept other processors"):
        decinv_fast.invert(vae, images_32, steps=1, attention="sdpa")
    assert all(type(p) is AttnProcessor for p in vae.attn_processors.values())


@pytest.mark.parametrize("method", ["adam", "fsm", "km"])
def test_fp32_master_keeps_updates_bf16_would_lose(method):
    """Steps of 1e-3 on latents near 1.0 are below half a bf16 ulp (2**-8): bf16 storage stalls,
    the fp32 master copy accumulates them (100 steps -> 0.9)."""
    from decinv_fast.ops import adam_residual_step, fsm_residual_step, km_residual_step

    def run(master: bool) -> torch.Tensor:
        z = torch.ones(2, 33, dtype=torch.bfloat16)
        e_x = torch.zeros_like(z)
        m, v, y = torch.zeros_like(z), torch.zeros_like(z), z.clone()
        main = z.float() if master else None
        sq = torch.zeros(2)
        if method == "adam":  # with the bias corrections, m_hat / sqrt(v_hat) = 1: steps of lr
            table = torch.tensor([[1e-3, 1 - 0.9 ** (k + 1), 1 - 0.999 ** (k + 1)] for k in range(100)])
        else:
            table = torch.full((100, 1), 1e-3 / 0.5)
        for k in range(100):
            step = torch.tensor([k])
            edz = torch.full_like(z, 0.5)  # residual g = 0.5 everywhere
            if method == "adam":
                adam_residual_step(edz, e_x, z, m, v, sq, table, step, eps=1e-8, master=main, backend="torch")
            elif method == "fsm":
                fsm_residual_step(edz, e_x, z, sq, table, step, master=main, backend="torch")
            else:
                km_residual_step(edz, e_x, y, z, sq, table, step, alpha=0.0, master=main, backend="torch")
        return z.float()

    assert torch.equal(run(False), torch.ones(2, 33))
    torch.testing.assert_close(run(True), torch.full((2, 33), 0.9), atol=2**-8, rtol=0)


@pytest.mark.parametrize("method", ["adam", "fsm", "km"])
def test_the_ops_take_the_step_table_in_the_update_math_dtype(method):
    """fp64 latents read a fp64 step table (a fp32 one rounds every rate: ~1e-9 off reference.py), the others
    fp32; a table in another dtype is refused, naming the one needed, not silently used."""
    from decinv_fast.ops import adam_residual_step, fsm_residual_step, km_residual_step

    columns = 3 if method == "adam" else 1

    def step(dtype: torch.dtype, table_dtype: torch.dtype) -> None:
        z = torch.zeros(2, 5, dtype=dtype)
        edz, e_x, m, v, y = torch.full_like(z, 0.5), torch.zeros_like(z), z.clone(), z.clone(), z.clone()
        table = torch.full((4, columns), 0.5, dtype=table_dtype)
        sq, k = torch.zeros(2), torch.tensor([0])
        if method == "adam":
            adam_residual_step(edz, e_x, z, m, v, sq, table, k, eps=1e-8, backend="torch")
        elif method == "fsm":
            fsm_residual_step(edz, e_x, z, sq, table, k, backend="torch")
        else:
            km_residual_step(edz, e_x, y, z, sq, table, k, alpha=0.0, backend="torch")

    for dtype, wanted, wrong in [(torch.float64, torch.float64, torch.float32),
                                 (torch.float32, torch.float32, torch.float64),
                                 (torch.float16, torch.float32, torch.float64)]:
        step(dtype, wanted)
        name = str(dtype)[6:]
        with pytest.raises(ValueError, match=rf"{method}_residual_step: table must be {str(wanted)[6:]} "
                                             rf"\(steps, {columns}\) on cpu for {name} latents"):
            step(dtype, wrong)


def test_km_master_extrapolates_by_alpha():
    """KM's fp32 master is the next evaluation point ``z_new + alpha (z_new - z_k)``, with ``z_k`` the
    stored (fp16) iterate; written out step by step in fp32 for alpha = 0.3."""
    from decinv_fast.ops import km_residual_step

    g = torch.Generator().manual_seed(0)
    e_x = torch.randn(2, 40, generator=g).half()
    z, y = e_x.clone(), e_x.clone()
    master, expected_y, expected_z = y.float(), y.float(), z.clone()
    table, sq, alpha = torch.full((4, 1), 0.7), torch.zeros(2), 0.3
    for k in range(4):
        edz = (torch.randn(2, 40, generator=g) * 0.1).half() + e_x
        km_residual_step(edz, e_x, y, z, sq, table, torch.tensor([k]), alpha=alpha, master=master, backend="torch")
        z_new = expected_y - 0.7 * (edz.float() - e_x.float())
        expected_y = z_new + alpha * (z_new - expected_z.float())
        expected_z = z_new.half()
        torch.testing.assert_close(master, expected_y, rtol=0, atol=1e-6)
        assert torch.equal(z, expected_z) and torch.equal(y, expected_y.half())


def test_bf16_runs_keep_no_master_by_default(tiny_kl, images_32):
    """``fp32_master=None`` is on for fp16 only: bf16 has fp32's range (no Adam underflow)."""
    run = dict(steps=3, dtype=torch.bfloat16, measure_memory=False)
    default = decinv_fast.invert(tiny_kl, images_32, **run).latents
    assert torch.equal(default, decinv_fast.invert(tiny_kl, images_32, fp32_master=False, **run).latents)
    assert not torch.equal(default, decinv_fast.invert(tiny_kl, images_32, fp32_master=True, **run).latents)


def test_fp16_default_avoids_the_official_second_moment_underflow():
    # E(D(z)) = z + c: every residual entry is c = 3e-3, so (1 - b2) c**2 = 9e-9 flushes to zero in
    # fp16 and the official update steps by lr * c / eps = 30 lr instead of about lr
    c, lr = 3e-3, 0.01
    pair = (lambda x: x, lambda z: z + c)
    x = torch.linspace(-0.5, 0.5, 3 * 16 * 16, dtype=torch.float16).reshape(1, 3, 16, 16)
    default = decinv_fast.invert(pair, x, steps=1, lr=lr, schedule="constant")
    official = decinv_fast.invert(pair, x, steps=1, lr=lr, schedule="constant", fp32_master=False)
    step_default = (x.float() - default.latents.float()).abs()
    step_official = (x.float() - official.latents.float()).abs()
    assert default.latents.dtype == official.latents.dtype == torch.float16
    torch.testing.assert_close(step_default, torch.full_like(step_default, lr * c / (c + 1e-4)), atol=2e-3, rtol=0)
    assert step_official.min() > 20 * lr


def test_fp16_adam_stores_its_second_moment_in_fp16_so_small_entries_still_flush_between_steps():
    """The master copy covers z; m and v are stored in the latents' dtype. With every residual entry c = 3e-3,
    v = (1 - b2) c**2 = 9e-9 is stored as 0 after each step, so step k sees only its own increment and moves by
    lr * c / (c * sqrt((1 - b2) / (1 - b2**(k+1))) + eps): 5.7 lr at step 50 (fp32 latents: about lr). The
    official code's lr * c / eps is 30 lr from the second step on."""
    c, lr, eps, b2 = 3e-3, 0.01, 1e-4, 0.999
    x = torch.linspace(-0.5, 0.5, 3 * 16 * 16, dtype=torch.float16).reshape(1, 3, 16, 16)
    for dtype, k, want in [(torch.float16, 49, lr * c / (c * math.sqrt((1 - b2) / (1 - b2 ** 50)) + eps)),
                           (torch.float32, 49, lr * c / (c + eps))]:
        pixels = x.to(dtype)
        pair = (lambda x: x, lambda z, fixed=pixels: fixed + c)  # E(D(z)) - E(x) = c at every step
        seen: list[torch.Tensor] = []
        decinv_fast.invert(pair, pixels, steps=k + 1, lr=lr, schedule="constant",
                           callback=lambda step, z, seen=seen: seen.append(z.float().clone()))
        last = (seen[-2] - seen[-1]).abs()
        assert want == pytest.approx(5.67 * lr if dtype == torch.float16 else 0.968 * lr, rel=0.01)
        torch.testing.assert_close(last, torch.full_like(last, want), rtol=0, atol=0.1 * want + 1e-3)


def test_fp32_master_through_invert(tiny_kl, images_32):
    out = decinv_fast.invert(tiny_kl, images_32, steps=4, dtype=torch.bfloat16, fp32_master=True)
    ref = decinv_fast.invert(tiny_kl, images_32, steps=4)
    assert out.latents.dtype == torch.bfloat16
    torch.testing.assert_close(out.latents.float(), ref.latents, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOTAutograd tracing of the VAE pass, no code generation (fast)
    pytest.param(True, marks=pytest.mark.slow),  # the real thing: inductor compiles C++ for the CPU
])
def test_compile_matches_eager(tiny_kl, images_32, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = decinv_fast.invert(tiny_kl, images_32, steps=3, compile=backend)
    b = decinv_fast.invert(tiny_kl, images_32, steps=3)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-4, atol=1e-5)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cuda"])
def test_cuda_graphs_on_gpu_equal_eager(tiny_kl, backend):
    vae = tiny_kl.to("cuda")
    try:
        x = torch.rand(2, 3, 32, 32, device="cuda") * 2 - 1
        eager = decinv_fast.invert(vae, x, steps=6, backend=backend)
        graphed = decinv_fast.invert(vae, x, steps=6, backend=backend, cuda_graphs=True)
        torch.testing.assert_close(graphed.latents, eager.latents, rtol=1e-5, atol=1e-6)
    finally:
        tiny_kl.to("cpu")


def test_result_repr_is_one_short_line(tiny_kl, images_32):
    result = decinv_fast.invert(tiny_kl, images_32, method="fsm", lr=0.5, steps=2, measure_memory=False)
    text = repr(result)
    assert "\n" not in text and len(text) < 300  # not the dataclass default's full tensors
    for fact in ("method='fsm'", f"latents {tuple(result.latents.shape)} float32", "steps_run=2", "stopped by steps"):
        assert fact in text, (fact, text)
    assert decinv_fast.invert(tiny_kl, images_32, method="auto", steps=2).method == "auto"  # as asked, like plan


@pytest.mark.parametrize("kw", [dict(method="grad", keep_best=True), dict(method="grad", optimizer="lbfgs"),
                                dict(method="fsm", patience=2), dict(method="auto")])
def test_step_counter_lives_on_the_latents_device(kw):
    """The tracker indexes its device buffers with the step counter: a counter left on the CPU fails
    on a GPU. The ``meta`` device stands in for one (same device check, no GPU needed)."""
    codec = (lambda x: x[:, :, ::2, ::2] * 1.0, lambda z: z.repeat_interleave(2, -1).repeat_interleave(2, -2))
    adapter, frames, plan = prepare_run(codec, torch.zeros(2, 3, 8, 8), steps=3, **kw)
    iteration = make_iteration(adapter, dataclasses.replace(frames, pixels=frames.pixels.to("meta")), plan)
    assert iteration.step.device.type == "meta"
    points = torch.zeros(2, 3 * 4 * 4, device="meta")
    iteration.tracker.observe(iteration.step, points, torch.zeros(2, device="meta"), torch.zeros(2, device="meta"))


@pytest.mark.parametrize("kw", [dict(method="fsm"), dict(method="grad", patience=5), dict(method="grad", progress=True),
                                dict(method="grad", optimizer="lbfgs")])
def test_an_all_zero_image_has_finite_errors(tiny_kl, kw):
    """A uniform mid-grey image is x = 0: its errors are absolute (not inf), and grad runs every step."""
    result = decinv_fast.invert(tiny_kl, torch.zeros(1, 3, 32, 32), steps=4, **kw)
    assert result.steps_run == 4
    assert torch.isfinite(result.pixel_residual_history).all() and torch.isfinite(result.residual_history).all()
    assert torch.isfinite(result.per_sample_residual).all() and torch.isfinite(result.residuals).all()


class ReusedOutput:
    """Wraps a function to return its result in one reused buffer, as a CUDA-graphed callable does."""

    def __init__(self, fn):
        self.fn, self.out = fn, None

    def __call__(self, x):
        result = self.fn(x)
        if self.out is None or self.out.shape != result.shape:
            self.out = torch.empty_like(result)
        return self.out.copy_(result)


@pytest.mark.parametrize("method", ["fsm", "adam", "auto", "grad"])
def test_an_encoder_that_reuses_its_output_buffer(method):
    """E(x) is kept while the encoder runs again: a kept reference to a reused buffer would be
    overwritten by E(D(z)), turning T into 0 and the run into a no-op that returns E(x)."""
    weight = torch.linspace(0.5, 1.5, 3)[None, :, None, None]
    encode = lambda x: x[:, :, ::2, ::2] * weight  # noqa: E731
    decode = lambda z: torch.tanh(z).repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    x = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    fresh = decinv_fast.invert((encode, decode), x, method=method, steps=4)
    reused = decinv_fast.invert((ReusedOutput(encode), decode), x, method=method, steps=4)
    torch.testing.assert_close(reused.latents, fresh.latents)
    assert not torch.allclose(fresh.latents, decinv_fast.encode((encode, decode), x))  # the run moved
