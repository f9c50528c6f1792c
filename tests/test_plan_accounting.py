"""What a memory plan adds up (weights, input pixels, the iteration's state, one chunk's transient peak)
and the budget ``chunk_frames="auto"`` plans the run with."""

import copy

import pytest
import torch
import torch.nn.functional as F

import decinv_fast
import decinv_fast.planner as planner
from decinv_fast.api import prepare_run
from decinv_fast.fixture import new_fixture_vae
from decinv_fast.loop import make_iteration
from decinv_fast.memory import cpu_allocator_peak
from decinv_fast.planner import plan

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_each_chunk_s_peak_adds_weights_input_and_state_to_its_transient(dtype):
    vae = new_fixture_vae()
    shape = (1, 2, 3, 32, 32)
    p = plan(vae, shape, dtype=dtype, chunks=[1, 2])
    assert p.weights_bytes == sum(t.nbytes for t in copy.deepcopy(vae).to(dtype).parameters())
    assert p.input_bytes == torch.empty(shape, dtype=dtype).nbytes  # the run's pixels, in its dtype
    assert p.state_bytes > 0
    for c in (1, 2):
        assert p.added_per_chunk[c] == p.state_bytes + p.transient[c]
        assert p.per_chunk[c] == p.weights_bytes + p.input_bytes + p.added_per_chunk[c]


def test_the_cpu_prediction_adds_onednn_s_copy_for_a_batch_of_one(monkeypatch):
    """oneDNN copies a convolution's input for a batch of one (not for two): the CPU prediction counts
    that copy, and it brings a batch of one within 10% of the measured peak (without it: 18% low)."""
    from decinv_fast import memory_trace

    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    cpu = [plan(vae, shape, dtype=torch.float32, device="cpu").added_per_chunk for shape in ((2, 3, 64, 64), x.shape)]
    # the tensors alone: the CUDA prediction without cuDNN's workspace
    monkeypatch.setattr(memory_trace, "cuda_conv_workspace", lambda *args: 0)
    bare = [plan(vae, shape, dtype=torch.float32, device="cuda").added_per_chunk for shape in ((2, 3, 64, 64), x.shape)]
    assert cpu[0][2] == bare[0][2] and cpu[0][1] > bare[0][1]  # chunks of two frames convolve without the copy
    decinv_fast.invert(vae, x[..., :16, :16], steps=1)  # load kernels outside the measurement
    _, measured = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, steps=1))
    assert abs(cpu[1][1] - measured) <= 0.1 * measured and bare[1][1] < 0.9 * measured, (cpu, bare, measured)


def test_small_convolutions_of_a_batch_of_one_are_planned_with_their_column_buffers():
    """PyTorch keeps a batch of one whose ``N * C * H * W`` is at most 20480 out of oneDNN: its native kernels
    unfold each 3x3 convolution's input (9 times its size). A tiny VAE at 32x32 peaks higher with one frame
    per call than with two, as measured; left out, one frame per call was predicted 59% low."""
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_kl_config(latent_channels=16)).eval().requires_grad_(False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    predicted = plan(vae, x.shape, dtype=torch.float32, device="cpu").added_per_chunk
    measured = {}
    for chunk in (1, 2):
        decinv_fast.invert(vae, x, steps=1, chunk_frames=chunk)  # load kernels outside the measurement
        _, measured[chunk] = cpu_allocator_peak(lambda c=chunk: decinv_fast.invert(vae, x, steps=1, chunk_frames=c))
        assert abs(predicted[chunk] - measured[chunk]) <= 0.1 * measured[chunk], (predicted, measured)
    assert measured[1] > measured[2] and predicted[1] > predicted[2]


def test_the_state_counts_each_method_s_own_latent_buffers():
    """Beyond FSM's buffers, Adam's run holds its two moments (and its update a latent of scratch,
    ``tmp`` in ops/_torch.py) and KM's its extrapolated point y."""
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    runs = {m: make_iteration(*prepare_run(vae, x, method=m, steps=1)) for m in ("fsm", "adam", "km")}
    latent = runs["fsm"].z.nbytes
    assert runs["adam"].m.nbytes == runs["adam"].v.nbytes == latent and runs["km"].y is not runs["km"].z
    state = {m: plan(vae, x.shape, dtype=torch.float32, method=m, chunks=[2]).state_bytes for m in runs}
    assert state["adam"] - state["fsm"] == 3 * latent
    assert state["km"] - state["fsm"] == latent


def test_auto_chunk_fits_half_the_available_ram(monkeypatch):
    """On the CPU the budget is half of the available RAM: the largest chunk within it, the smallest
    chunk when none fits."""
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    per_chunk = plan(vae, x.shape, dtype=torch.float32, device="cpu").per_chunk
    assert sorted(per_chunk) == [1, 2, 4]
    for ram, chunk in ((2 * per_chunk[2], 2), (2 * per_chunk[4], 4), (2, 1)):
        monkeypatch.setattr(planner, "available_ram", lambda ram=ram: ram)
        assert decinv_fast.invert(vae, x, steps=1, chunk_frames="auto", measure_memory=False).chunk_frames == chunk


def test_the_cuda_budget_counts_the_allocator_s_unused_cache_as_available(monkeypatch):
    """Blocks an earlier call freed stay reserved by torch's cache, which the driver does not count as free:
    the budget adds them back (without, a second call's ``chunk_frames="auto"`` planned in less memory).
    A per-process cap (``set_per_process_memory_fraction``) bounds it. What the process holds is not in it."""
    from decinv_fast.memory import cuda_obtainable

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 23 * gib)  # 20 GiB cached, unused
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0, raising=False)
    assert cuda_obtainable(torch.device("cuda", 0)) == int(0.9 * 30 * gib)
    assert cuda_obtainable(torch.device("cuda", 0), share=1.0) == 30 * gib
    # a process capped at a quarter of the card (20 GiB) can get 17 GiB more, not 30
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 0.25, raising=False)
    assert cuda_obtainable(torch.device("cuda", 0), share=1.0) == 17 * gib


def test_on_cuda_the_chunk_s_own_allocations_must_fit_what_is_free(monkeypatch):
    """On a GPU the weights and input are resident already, beside other models (a pipeline's UNet): the chunk
    is chosen by what the call adds within what the process can still get, not by the whole prediction
    within everything it holds (which counted the other models' memory as free)."""
    vae = new_fixture_vae().eval().requires_grad_(False)
    result = plan(vae, (1, 4, 3, 32, 32), dtype=torch.float32, device="cuda")
    added, whole = result.added_per_chunk, result.per_chunk
    assert sorted(added) == [1, 2, 4] and added[2] < added[4] and whole[2] > added[2]
    cuda = torch.device("cuda", 0)
    for free, chunk in ((added[4], 4), (added[4] - 1, 2), (added[2], 2), (added[1] - 1, 1)):
        monkeypatch.setattr(planner, "cuda_obtainable", lambda device, free=free: free)
        assert planner.chunk_within(result, cuda) == chunk, free
    monkeypatch.setattr(planner, "available_ram", lambda: 2 * whole[2])  # the CPU: the whole prediction
    assert planner.chunk_within(result, torch.device("cpu")) == 2


def test_auto_chunk_plans_the_run_s_anderson_options(monkeypatch):
    seen = []
    monkeypatch.setattr(planner, "plan", lambda *a, **k: seen.append(k) or plan(*a, **k))
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    decinv_fast.invert(vae, x, steps=1, method="anderson", memory=2, mixing="pixel", chunk_frames="auto")
    assert [(k["method"], k["memory"], k["mixing"]) for k in seen] == [("anderson", 2, "pixel")]


def test_a_vae_on_xformers_is_planned_as_the_fused_kernel_it_runs():
    """Its processors are stock ones: planned as SDPA's fused kernel, never traced (xformers has no meta
    kernels, and may not even be installed where one plans)."""
    from diffusers.models.attention_processor import XFormersAttnProcessor

    kw = dict(dtype=torch.float32, chunks=[1])
    vae = new_fixture_vae()
    default = plan(vae, (1, 3, 64, 64), **kw).added_per_chunk
    vae.set_attn_processor(XFormersAttnProcessor())
    assert plan(vae, (1, 3, 64, 64), **kw).added_per_chunk == default


@pytest.mark.parametrize("dim", [2, 3])
def test_cuda_convolutions_hold_their_input_and_output_again(dim):
    """cuDNN's workspace, as measured on an H100 (benchmarks/gpu_validation.py): the input and the output
    again, channels-last, while the convolution runs; its backward holds the output's gradient and the input."""
    from decinv_fast.memory_trace import LiveBytes

    conv = (F.conv2d, F.conv3d)[dim - 2]
    spatial = (9,) * dim
    x = torch.empty((2, 4, *spatial), device="meta", requires_grad=True)
    weight = torch.empty((6, 4, *(3,) * dim), device="meta")
    inner = (2, 6, *(5,) * dim)  # dilated kernel 5: (9 + 2 * 2 - 5) // 2 + 1
    with LiveBytes("cuda") as tracker:
        out = conv(x, weight, stride=2, padding=2, dilation=2)
    assert tuple(out.shape) == inner
    x_bytes, out_bytes = x.numel() * 4, out.numel() * 4
    assert tracker.peak == out_bytes + (x_bytes + out_bytes)  # x existed before: only what the pass adds
    with LiveBytes("cuda") as tracker:
        out.sum().backward()
    assert tracker.peak >= x_bytes + (out_bytes + x_bytes)  # dx, then dy and x again
    plain = x.detach()
    with LiveBytes(None) as tracker:
        conv(plain, weight, stride=2, padding=2, dilation=2)
    assert tracker.peak == out_bytes
