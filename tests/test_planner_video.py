"""The memory planner on causal 3-D video VAEs (Wan, CogVideoX, HunyuanVideo, LTX-Video, ...): chunks of whole
videos, traced as the VAE takes them, against the CPU allocator's measured peak, and ``chunk_frames="auto"``."""

import pytest
import torch
from video_vae_models import KINDS, make_vae, video_of

import decinv_fast
import decinv_fast.planner as planner
from decinv_fast.memory import cpu_allocator_peak
from decinv_fast.memory_trace import meta_vae
from decinv_fast.planner import plan

pytestmark = pytest.mark.usefixtures("single_thread")
ARCHITECTURES = [kind for kind in KINDS if not kind.endswith("-timestep")]  # a decode timestep sets no memory


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("method", ["adam", "auto", "grad"])
@pytest.mark.parametrize("videos_per_chunk", [2, 1])
def test_prediction_within_25_percent_of_measured(kind, method, videos_per_chunk):
    """A batch of two videos, both in one call (oneDNN's 3-D convolutions) or one per call (a batch of one:
    PyTorch's native kernels and their column buffers); the tolerance of tests/test_planner.py."""
    vae = make_vae(kind)
    frames = KINDS[kind][0]
    x = video_of(frames)
    chunk = videos_per_chunk * frames
    run = dict(steps=1, method=method, chunk_frames=chunk, measure_memory=False)
    decinv_fast.invert(vae, x, **run)  # load kernels outside the measurement
    _, measured = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, **run))
    predicted = plan(vae, x.shape, dtype=torch.float32, device="cpu", method=method).added_per_chunk[chunk]
    assert abs(predicted - measured) <= 0.25 * measured, (predicted, measured)


def test_chunks_are_whole_videos_and_the_state_is_of_the_real_latents():
    """(2, 5, 3, 32, 32) for Wan: chunks of 5 and 10 frames; latents (2, 4, 2, 4, 4), not a latent per frame."""
    vae = make_vae("wan")
    shape = (2, 5, 3, 32, 32)
    fsm = plan(vae, shape, dtype=torch.float32, device="cpu", method="fsm")
    adam = plan(vae, shape, dtype=torch.float32, device="cpu", method="adam")
    latent_bytes = 2 * 4 * 2 * 4 * 4 * 4
    assert sorted(fsm.per_chunk) == [5, 10]
    assert fsm.state_bytes == 3 * latent_bytes + 2 * 4 * 64  # FSM's three latents, per-sample norms
    assert adam.state_bytes - fsm.state_bytes == 3 * latent_bytes
    assert fsm.input_bytes == 2 * 5 * 3 * 32 * 32 * 4
    assert fsm.weights_bytes == sum(p.numel() for p in vae.parameters()) * 4
    assert fsm.transient == adam.transient  # the same E(D(z)) pass per chunk
    images = plan(vae, (2, 3, 32, 32), dtype=torch.float32, device="cpu", method="fsm")  # 1-frame videos
    assert sorted(images.per_chunk) == [1, 2] and images.state_bytes == 3 * 2 * 4 * 1 * 4 * 4 * 4 + 2 * 4 * 64


@pytest.mark.parametrize("kind, shape, kwargs, match", [
    ("wan", (1, 4, 3, 32, 32), {}, r"shape: AutoencoderKLWan takes videos of 1 \+ 4k frames .* got 4 frames"),
    ("cogvideox", (1, 5, 3, 32, 32), {}, r"shape: AutoencoderKLCogVideoX takes videos of 1 \+ 8k frames"),
    ("hunyuan", (2, 5, 3, 32, 32), {"chunks": [4]}, "chunks: 4 frames per call is not possible for 10 frame"
                                                    r"\(s\) in videos of 5; .* in whole videos"),
])
def test_shapes_and_chunks_invert_would_refuse_are_refused(kind, shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(make_vae(kind), shape, dtype=torch.float32, device="cpu", **kwargs)


def test_the_meta_copy_keeps_ltx_s_latent_space_and_the_vae_s_tiling():
    ltx = make_vae("ltx")
    meta = meta_vae(ltx, torch.float32, "auto")
    assert torch.equal(meta.latents_mean, ltx.latents_mean) and torch.equal(meta.latents_std, ltx.latents_std)
    assert next(meta.parameters()).is_meta
    wan = make_vae("wan")
    shape = (1, 5, 3, 64, 64)
    whole = plan(wan, shape, dtype=torch.float32, device="cpu").transient[5]
    wan.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16,
                      tile_sample_stride_width=16)
    assert meta_vae(wan, torch.float32, "auto").use_tiling
    assert plan(wan, shape, dtype=torch.float32, device="cpu").transient[5] < 0.5 * whole


def test_auto_chunk_picks_the_largest_whole_videos_that_fit(monkeypatch):
    """On the CPU the budget is half the available RAM; chunks are whole videos, and the run's latents are
    those of the same chunk given by hand."""
    vae = make_vae("wan")
    x = video_of(5, batch=4)
    per_chunk = plan(vae, x.shape, dtype=torch.float32, device="cpu").per_chunk
    assert sorted(per_chunk) == [5, 10, 20]
    expected = {}
    for budget in (per_chunk[10], per_chunk[20], 1):
        fitting = [c for c, p in per_chunk.items() if p <= budget]
        expected[budget] = max(fitting) if fitting else 5
    assert set(expected.values()) == {10, 20, 5}  # three different choices: the test tells them apart
    for budget, chunk in expected.items():
        monkeypatch.setattr(planner, "available_ram", lambda ram=2 * budget: ram)
        auto = decinv_fast.invert(vae, x, steps=2, chunk_frames="auto", measure_memory=False)
        assert auto.chunk_frames == chunk
        by_hand = decinv_fast.invert(vae, x, steps=2, chunk_frames=chunk, measure_memory=False)
        assert torch.equal(auto.latents, by_hand.latents)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_a_vae_built_on_the_meta_device_plans_as_the_real_one_without_warnings(kind):
    """``with torch.device("meta"): vae = AutoencoderKLWan(...)`` (no weights, as the README plans the
    released VAEs): the same prediction; and neither planning nor inverting reads a config value as an
    attribute (diffusers' FutureWarning)."""
    import warnings

    real = make_vae(kind)
    with torch.device("meta"):
        weightless = type(real).from_config(real.config)
    frames = KINDS[kind][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predicted = plan(weightless, (1, frames, 3, 32, 32), dtype=torch.float32, device="cuda").per_chunk
        assert predicted == plan(real, (1, frames, 3, 32, 32), dtype=torch.float32, device="cuda").per_chunk
        decinv_fast.invert(real, video_of(frames, batch=1), steps=1, measure_memory=False)


@pytest.mark.parametrize("kind, name, frames, size", [
    ("AutoencoderKLWan", "Wan 2.1", 5, 32), ("AutoencoderKLWan", "Wan 2.2 TI2V-5B", 5, 32),
    ("AutoencoderKLQwenImage", "Qwen-Image", 5, 32), ("AutoencoderKLMochi", "Mochi 1", 7, 32),
    pytest.param("AutoencoderKLHunyuanVideo15", "HunyuanVideo 1.5", 5, 32, marks=pytest.mark.slow),  # 1.26 G: 5 GB
    pytest.param("AutoencoderKLLTX2Video", "LTX-2", 9, 64, marks=pytest.mark.slow),  # its decoder needs 2x2 latents
    ("AutoencoderKLMagvit", "EasyAnimate V5.1", 5, 32), ("AutoencoderKLFlux2", "FLUX.2", 1, 128),  # an image VAE
    ("AutoencoderKLCosmos", "Cosmos 1.0", 9, 64),
    pytest.param("AutoencoderKLCosmos", "Cosmos 1.0", 1, 640, marks=pytest.mark.slow),  # its attention matrix: 20 s
    ("AutoencoderKLQwenImage21", "Qwen-Image 2.1", 1, 64),  # RGBA stills
    ("AutoencoderKLQwenImage21", "Qwen-Image 2.1", 1, 32),  # its peak: oneDNN's copy of 1152-channel weights
])
def test_the_released_architectures_are_predicted_within_5_percent_of_measured(kind, name, frames, size):
    """The VAEs as released (diffusers' class defaults, LTX-2's and Wan 2.2's as benchmarks.video_vaes.RELEASED_CONFIG
    sets them; random weights), one short video, one step. Measured / predicted MiB: Wan 2.1's (127 M parameters, 16
    latent channels) 58.4 / 58.3 (at 64x64: 81.4 and 81.2; HunyuanVideo's architecture 135.6 and 135.4);
    Qwen-Image's (Wan 2.1's) the same; Wan 2.2's (705 M) 113.9 / 113.8; Mochi's (460 M) 57.9 / 57.0; EasyAnimate's
    (244 M) 49.7 / 49.7; FLUX.2's (84 M, one 128x128 image) 62.5 / 62.5; Cosmos 1.0's (106 M, 9 frames at 64x64)
    16.8 / 16.4, and one 640x640 frame 464.5 / 465.2, where PyTorch runs its attention as the math kernel (the
    query's head dim is strided; decinv_fast.sdpa_rules) and the 6400 x 6400 matrix sets the peak (predicted
    378.5 as a fused kernel; 426.2 without the bool mask the math kernel's softmax makes);
    HunyuanVideo 1.5's (1.26 G) 434.6 / 434.5; LTX-2's (1.22 G, 9 frames at 64x64) 32.8 / 32.4; Qwen-Image 2.1's
    (338 M, one RGBA image) 52.2 / 52.2 at 64x64 and 47.2 / 47.2 at 32x32, where the peak is oneDNN's temporary
    copy of a 1152-channel convolution's weights (45.6 MiB; predicted 50.5 and 12.7 before the planner counted it)."""
    from benchmarks.video_vaes import released_shape, released_vae

    torch.manual_seed(0)
    vae = released_vae(kind, name).eval().requires_grad_(False)
    x = torch.rand(released_shape(vae, frames, size, size)) * 2 - 1
    run = dict(steps=1, method="adam", measure_memory=False)
    decinv_fast.invert(vae, x, **run)  # load kernels outside the measurement
    _, measured = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, **run))
    predicted = plan(vae, x.shape, dtype=torch.float32, device="cpu", method="adam").added_per_chunk[frames]
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)
