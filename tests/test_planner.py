"""The memory planner against the CPU allocator's measured peak, and its chunk choice."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor

import decinv_fast
from decinv_fast.fixture import new_fixture_vae
from decinv_fast.memory import cpu_allocator_peak
from decinv_fast.options import AUTO
from decinv_fast.planner import plan


def sd_layout(widths=(32, 64, 128, 128)):
    """The SD VAE's layer layout (2 resnets per block, mid attention) at reduced widths."""
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=widths, layers_per_block=2, latent_channels=4, norm_num_groups=32,
    ).eval().requires_grad_(False)


CONFIGS = [
    ("fixture", (1, 3, 128, 128), "adam", None, {}),
    ("fixture", (1, 4, 3, 64, 64), "fsm", 2, {}),
    ("fixture", (2, 3, 64, 64), "grad", None, {}),
    ("sd", (1, 3, 64, 64), "adam", None, {}),
    ("sd", (1, 3, 64, 64), "grad", None, {}),
    # batches of two or more: oneDNN convolves them without the layout copy it makes for one image
    ("fixture", (8, 3, 64, 64), "adam", None, {}),
    ("sd", (1, 4, 3, 128, 128), "adam", 2, {}),
    # the codec's pixel-sized temporaries (residual, its blur) stay below the decoder's peak: not traced
    ("fixture", (2, 3, 128, 128), "anderson", None, {"mixing": "pixel", "residual_blur": 1.0}),
    ("sd", (1, 3, 64, 64), "anderson", None, {"mixing": "pixel", "residual_blur": 1.0}),
    ("fixture", (2, 3, 64, 64), "grad", None, {"optimizer": "lbfgs"}),
]


@pytest.mark.parametrize("name,shape,method,chunk,options", CONFIGS)
def test_prediction_within_25_percent_of_measured(name, shape, method, chunk, options):
    torch.manual_seed(0)
    vae = new_fixture_vae().eval().requires_grad_(False) if name == "fixture" else sd_layout()
    x = torch.rand(shape) * 2 - 1
    run = dict(steps=1, method=method, **options)
    decinv_fast.invert(vae, x[..., :16, :16], **run)  # load kernels outside the measurement
    _, measured = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, chunk_frames=chunk, **run))
    planned = {k: options[k] for k in ("mixing", "optimizer") if k in options}
    p = plan(vae, shape, dtype=torch.float32, device="cpu", method=method, **planned)
    frames = shape[0] * (shape[1] if len(shape) == 5 else 1)
    predicted = p.added_per_chunk[chunk or frames]
    assert abs(predicted - measured) <= 0.25 * measured, (predicted, measured)


def test_peak_is_set_by_chunk_not_frames():
    vae = new_fixture_vae()
    p8 = plan(vae, (1, 8, 3, 64, 64), dtype=torch.float16, device="cuda")
    p16 = plan(vae, (1, 16, 3, 64, 64), dtype=torch.float16, device="cuda")
    assert p8.transient[2] == p16.transient[2]  # same chunk, same transient peak
    assert p16.transient[16] > 4 * p16.transient[2]


def test_gradient_based_needs_more_memory():
    vae = sd_layout()
    free = plan(vae, (1, 3, 64, 64), dtype=torch.float32, device="cuda")
    grad = plan(vae, (1, 3, 64, 64), dtype=torch.float32, device="cuda", method="grad")
    assert grad.transient[1] > 2 * free.transient[1]


def test_budget_picks_largest_fitting_chunk():
    vae = new_fixture_vae()
    full = plan(vae, (1, 8, 3, 64, 64), dtype=torch.float32, device="cuda")
    budget = full.per_chunk[4]  # a prediction equal to the budget fits
    chosen = plan(vae, (1, 8, 3, 64, 64), dtype=torch.float32, device="cuda", budget_bytes=budget)
    assert chosen.chunk == 4
    assert plan(vae, (1, 8, 3, 64, 64), dtype=torch.float32, device="cuda", budget_bytes=budget - 1).chunk == 2
    assert plan(vae, (1, 8, 3, 64, 64), dtype=torch.float32, budget_bytes=1).chunk is None


def test_math_attention_materialises_the_score_matrix():
    vae = new_fixture_vae()
    kw = dict(dtype=torch.float32, device="cuda", method="grad")
    sdpa = plan(vae, (1, 3, 512, 512), attention="sdpa", **kw)
    math = plan(vae, (1, 3, 512, 512), attention="math", **kw)
    # 64x64 latent = 4096 tokens: autograd keeps the math path's 4096 x 4096 fp32 softmax (64 MiB)
    assert math.transient[1] - sdpa.transient[1] >= 48 * 2**20


@pytest.mark.parametrize("shape, kwargs, match", [
    ((1, 64, 64), {}, "shape must be"),
    ((1, 3, 64, 64.0), {}, "shape must be"),
    ((0, 3, 64, 64), {}, "shape must be"),
    ((1, 3, 60, 64), {}, "multiples of 8"),
    ((1, 3, 64, 60), {}, "width 60 must be multiples of 8"),
    ((1, 4, 64, 64), {}, "shape must be"),  # invert reads RGB images: 3 channels
    ((1, 2, 4, 64, 64), {}, "shape must be"),
    ((1, 3, 64, 64), dict(method="adamw"), "method must be one of"),
    ((1, 3, 64, 64), dict(method="auto", memory=3), "method='auto' sets its own"),
    ((1, 3, 64, 64), dict(method="anderson", memory=-1), "memory"),
    ((1, 3, 64, 64), dict(method="anderson", mixing="both"), "mixing"),
    ((1, 3, 64, 64), dict(method="adam", optimizer="lbfgs"), "optimizer is an option of method='grad'"),
    ((1, 3, 64, 64), dict(method="grad", optimizer="sgd"), "optimizer"),
    ((1, 3, 64, 64), dict(method="grad", optimizer="lbfgs", memory=0), "memory [(]L-BFGS pairs[)]"),
    # options the method does not take are refused, as invert refuses them
    ((1, 3, 64, 64), dict(method="grad", memory=3), "memory is an option of method='anderson' and of grad's"),
    ((1, 3, 64, 64), dict(method="fsm", memory=3), "memory is an option"),
    ((1, 3, 64, 64), dict(method="adam", mixing="pixel"), "mixing is an option of method='anderson'"),
    ((2, 3, 64, 64), dict(chunks=[4]), "chunks: 4 frames per call is not possible for 2 frame"),
    ((1, 3, 64, 64), dict(dtype=torch.int8), "dtype"),
    ((1, 3, 64, 64), dict(device="tpu"), "device"),
    # the rules model a CUDA device and the CPU only: no meta (where the trace runs) or other backends
    ((1, 3, 64, 64), dict(device="meta"), "device must be a CUDA device or 'cpu'"),
    ((1, 3, 64, 64), dict(device=torch.device("mps")), "device must be a CUDA device or 'cpu'.*mps"),
    ((1, 3, 64, 64), dict(device=None), "device must be"),
    ((1, 3, 64, 64), dict(budget_bytes=-5), "budget_bytes"),
    ((1, 3, 64, 64), dict(attention="flash"), "attention"),
    ((1, 3, 64, 64), dict(chunks=[0]), "chunks"),
    ((1, 3, 64, 64), dict(chunks=4), "chunks"),
    ((1, 3, 64, 64), dict(fp32_master="no"), "fp32_master must be True or False"),
    ((1, 3, 64, 64), dict(method="grad", fp32_master=True), "fp32_master=True is an option of the gradient-free"),
])
def test_bad_arguments(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(new_fixture_vae(), shape, **{"dtype": torch.float32, **kwargs})


def test_the_plan_names_its_device():
    """An index or a torch.device is planned as the CUDA device or CPU it names, and the plan says which."""
    vae = new_fixture_vae()
    devices = [plan(vae, (1, 3, 64, 64), dtype=torch.float32, device=d, chunks=[1]).device
               for d in (0, torch.device("cuda", 1), torch.device("cpu"), "cuda")]
    assert devices == ["cuda:0", "cuda:1", "cpu", "cuda"]


def test_callables_cannot_be_planned():
    with pytest.raises(TypeError, match="diffusers VAE"):
        plan((lambda x: x, lambda z: z), (1, 3, 64, 64), dtype=torch.float32)


def test_auto_is_planned_as_its_anderson_run():
    vae, shape = new_fixture_vae(), torch.Size([2, 3, 64, 64])  # a torch.Size shape, as from x.shape
    auto = plan(vae, shape, dtype=torch.float32, method="auto", chunks=[1, 2])
    settings = {k: AUTO["options"][k] for k in ("memory", "mixing")}
    anderson = plan(vae, shape, dtype=torch.float32, method=AUTO["method"], chunks=(c for c in (1, 2)), **settings)
    assert auto.method == "auto" and auto.per_chunk == anderson.per_chunk  # a generator's chunks are read once
    for listed in (np.array([1, 2]), np.array([1, 2], dtype=np.uint8)):  # no truth value: read as a list
        assert plan(vae, shape, dtype=torch.float32, method="auto", chunks=listed).per_chunk == auto.per_chunk
    assert auto.state_bytes > plan(vae, shape, dtype=torch.float32, method="anderson", chunks=[1]).state_bytes


@pytest.mark.parametrize("dtype, math_size", [(torch.float16, 4), (torch.float64, 8)])
def test_anderson_state_counts_its_history(dtype, math_size):
    """Anderson's history is fp32, fp64 for fp64 latents (its mixing math)."""
    vae = new_fixture_vae()
    shape = (2, 3, 64, 64)
    fsm = plan(vae, shape, dtype=dtype, method="fsm", chunks=[2])
    anderson = plan(vae, shape, dtype=dtype, method="anderson", chunks=[2], memory=3)
    latent_elements = 2 * 4 * 8 * 8
    assert anderson.state_bytes - fsm.state_bytes == latent_elements * math_size * (2 * 3 + 2)
    pixel = plan(vae, shape, dtype=dtype, method="anderson", chunks=[2], memory=3, mixing="pixel")
    assert pixel.state_bytes - anderson.state_bytes == 2 * 3 * 64 * 64 * math_size * (3 + 2)


@pytest.mark.parametrize("dtype, math_size", [(torch.float16, 4), (torch.float64, 8)])
def test_lbfgs_state_counts_its_pairs(dtype, math_size):
    vae = new_fixture_vae()
    shape = (2, 3, 64, 64)
    adam = plan(vae, shape, dtype=dtype, method="grad", chunks=[2])
    lbfgs = plan(vae, shape, dtype=dtype, method="grad", optimizer="lbfgs", memory=3, chunks=[2])
    latent_elements, size = 2 * 4 * 8 * 8, torch.tensor([], dtype=dtype).element_size()
    assert adam.state_bytes == latent_elements * size * 4  # z, its gradient, Adam's m and v
    assert lbfgs.state_bytes == latent_elements * (size * 2 + math_size * (2 * 3 + 4))
    assert lbfgs.transient == adam.transient  # the same decoder forward + backward


def test_auto_chunk_plans_the_run_s_attention(monkeypatch):
    """attention="math" builds the tokens x tokens matrix: the chunk is planned with it."""
    import decinv_fast.planner as planner

    seen = []
    monkeypatch.setattr(planner, "plan", lambda *a, **k: seen.append(k) or plan(*a, **k))
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    for attention in ("math", "sdpa"):
        decinv_fast.invert(vae, x, steps=1, chunk_frames="auto", attention=attention)
    assert [k["attention"] for k in seen] == ["math", "sdpa"]
    math = plan(vae, (1, 3, 1024, 1024), dtype=torch.float32, attention="math", chunks=[1])
    fused = plan(vae, (1, 3, 1024, 1024), dtype=torch.float32, chunks=[1])
    scores = 16384**2 * 4  # 16384 tokens: the fp32 scores matrix, 1 GiB
    assert math.transient[1] > fused.transient[1] + scores // 2  # it dominates the peak


def test_auto_chunk_plans_the_run_s_optimizer(monkeypatch):
    import decinv_fast.planner as planner

    seen = []
    monkeypatch.setattr(planner, "plan", lambda *a, **k: seen.append(k) or plan(*a, **k))
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    a = decinv_fast.invert(vae, x, steps=3, method="grad", optimizer="lbfgs", memory=2, chunk_frames="auto")
    b = decinv_fast.invert(vae, x, steps=3, method="grad", optimizer="lbfgs", memory=2)
    assert [(k["method"], k["optimizer"], k["memory"]) for k in seen] == [("grad", "lbfgs", 2)]
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["anderson", "auto"])
def test_invert_auto_chunk_with_the_accelerated_methods(method):
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    a = decinv_fast.invert(vae, x, steps=3, method=method, chunk_frames="auto")
    b = decinv_fast.invert(vae, x, steps=3, method=method)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-6)


def test_invert_auto_chunk_matches_unchunked():
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    a = decinv_fast.invert(vae, x, steps=2, chunk_frames="auto")
    b = decinv_fast.invert(vae, x, steps=2)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, dtype, fp32_master, kept", [
    ("adam", torch.float16, None, True), ("adam", torch.bfloat16, None, False), ("adam", torch.bfloat16, True, True),
    ("km", torch.float16, None, True), ("fsm", torch.float16, False, False), ("auto", torch.float16, None, True),
    ("anderson", torch.bfloat16, True, True), ("adam", torch.float32, True, False),
])
def test_state_counts_the_fp32_master_the_run_allocates(method, dtype, fp32_master, kept):
    """fp16 runs keep a fp32 master copy of the iterate by default, bf16 ones only when asked."""
    from decinv_fast.api import prepare_run
    from decinv_fast.loop import make_iteration

    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    iteration = make_iteration(*prepare_run(vae, x, method=method, steps=1, dtype=dtype, fp32_master=fp32_master))
    allocated = 0 if iteration.master is None else iteration.master.untyped_storage().nbytes()
    assert allocated == (2 * 4 * 4 * 4 * 4 if kept else 0)  # 2 latents of 4x4x4 in fp32
    kw = dict(dtype=dtype, method=method, chunks=[2])
    without = plan(vae, x.shape, fp32_master=False, **kw)
    assert plan(vae, x.shape, fp32_master=fp32_master, **kw).state_bytes - without.state_bytes == allocated


def test_auto_chunk_plans_the_run_s_fp32_master(monkeypatch):
    import decinv_fast.planner as planner

    seen = []
    monkeypatch.setattr(planner, "plan", lambda *a, **k: seen.append(k) or plan(*a, **k))
    vae = new_fixture_vae().eval().requires_grad_(False)
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    for master in (None, True):
        decinv_fast.invert(vae, x, steps=1, dtype=torch.bfloat16, chunk_frames="auto", fp32_master=master)
    assert [k["fp32_master"] for k in seen] == [None, True]


def wide_attention_vae():
    """Two blocks (2x downsampling) of 8 and 16 channels: at 128x128, 4096 tokens whose 64 MiB fp32
    attention matrix dwarfs every convolution's activations."""
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
    ).eval().requires_grad_(False)


class RecordingProcessor(AttnProcessor):
    """A user's processor computing softmax(QK^T)V itself (not SDPA), with state of its own."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        self.calls += 1
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_auto_attention_plans_the_vae_s_own_processors():
    """attention='auto' keeps a user's processor (only the plain AttnProcessor becomes SDPA): one that
    does not call SDPA builds the tokens x tokens matrix, and the plan says so."""
    shape = (1, 3, 128, 128)
    kw = dict(dtype=torch.float32, device="cpu", chunks=[1])
    default = plan(wide_attention_vae(), shape, **kw).added_per_chunk[1]
    plain = wide_attention_vae()
    plain.set_attn_processor(AttnProcessor())
    assert plan(plain, shape, **kw).added_per_chunk[1] == default  # the run swaps it for SDPA
    vae, own = wide_attention_vae(), RecordingProcessor()
    vae.set_attn_processor(own)
    predicted = plan(vae, shape, **kw).added_per_chunk[1]
    assert own.calls == 0 and all(p is own for p in vae.attn_processors.values())  # traced on a copy
    x = torch.rand(shape) * 2 - 1
    decinv_fast.invert(vae, x[..., :16, :16], steps=1)  # load kernels outside the measurement
    _, measured = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, steps=1))
    assert predicted - default >= 96 * 2**20  # the 64 MiB scores and their softmax
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)


def test_auto_attention_with_a_processor_that_cannot_be_copied():
    class Uncopyable(AttnProcessor):
        def __deepcopy__(self, memo):
            raise TypeError("holds a lock")

    vae = new_fixture_vae()
    vae.set_attn_processor(Uncopyable())
    with pytest.raises(ValueError, match=r"attention='auto' plans with the VAE's own attention processors "
                                         r"\(Uncopyable\).*holds a lock.*attention='sdpa' or 'math'"):
        plan(vae, (1, 3, 64, 64), dtype=torch.float32)
    assert plan(vae, (1, 3, 64, 64), dtype=torch.float32, attention="sdpa").chunk is None  # no budget given


def test_auto_attention_with_a_processor_that_fails_on_the_meta_device():
    """The trace runs on weightless meta tensors: a user's processor that reads values (``.item()``)
    fails there, and the error says which processor and what to pass instead."""
    class ReadsValues(AttnProcessor):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            if hidden_states.abs().max().item() > 1e4:
                raise RuntimeError("overflow")
            return super().__call__(attn, hidden_states, *args, **kwargs)

    vae = new_fixture_vae()
    vae.set_attn_processor(ReadsValues())
    with pytest.raises(ValueError, match=r"own attention processors \(ReadsValues\), which failed on the meta "
                                         r"device.*attention='sdpa' or 'math'"):
        plan(vae, (1, 3, 64, 64), dtype=torch.float32)
    assert plan(vae, (1, 3, 64, 64), dtype=torch.float32, attention="sdpa").chunk is None


def test_the_default_dtype_is_the_vae_s_as_invert_runs_it():
    """``dtype=None`` plans the VAE's own dtype, the one ``invert`` runs it in: a fp32 VAE (SDXL's is kept
    fp32 by ``force_upcast``) was planned in fp16 by default, half of what its run holds."""
    vae = new_fixture_vae()
    shape = (1, 2, 3, 64, 64)
    kw = dict(device="cuda", chunks=[1, 2])
    fp32 = plan(vae, shape, **kw)
    assert fp32.dtype == torch.float32
    assert fp32.per_chunk == plan(vae, shape, dtype=torch.float32, **kw).per_chunk
    assert fp32.per_chunk[2] > 1.9 * plan(vae, shape, dtype=torch.float16, **kw).per_chunk[2]
    half = plan(vae.to(torch.float16), shape, **kw)
    assert half.dtype == torch.float16 and half.per_chunk == plan(vae, shape, dtype=torch.float16, **kw).per_chunk
