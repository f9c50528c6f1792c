"""Every bad input gets a clear error naming the argument, never a NaN result or a deep stack."""

import copy
import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import decinv_fast
from decinv_fast import loop
from decinv_fast.options import AUTO


@pytest.mark.parametrize("images,match", [
    (torch.full((1, 3, 32, 32), float("nan")), "NaN or infinite"),
    (torch.full((1, 3, 32, 32), float("inf")), "NaN or infinite"),
    (torch.zeros(3, 32), "expected"),
    (torch.zeros(1, 1, 1, 1, 3, 32, 32), "expected"),
    (torch.zeros(1, 4, 32, 32), "channels"),
    (torch.full((1, 4, 4, 4), 7.0), "4 channels look like latents"),  # before the pixel range's complaint
    (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), r"looks channels-last: pass images.movedim\(-1, -3\)"),
    (torch.zeros(32, 32, 3), "looks channels-last"),
    (torch.zeros(1, 3, 30, 32), "multiples of 8"),
    (torch.zeros(1, 3, 32, 36), "multiples of 8"),
    (torch.full((1, 3, 32, 32), 300, dtype=torch.int32), r"\[0, 255\]"),
    (torch.full((1, 3, 32, 32), -1, dtype=torch.int64), r"\[0, 255\]"),
    (torch.full((1, 3, 32, 32), 255.0), r"\[-1, 1\]"),
    (torch.full((1, 3, 32, 32), 1.6), r"\[-1, 1\]"),  # beyond a decoder's overshoot: [0, 2] or the like
    (torch.full((1, 3, 32, 32), 1.5001), r"overshoot to \+-1.5 is taken\), got range \[1.5001, 1.5001\]"),
    (torch.zeros(0, 3, 32, 32), "empty"),
    ([], "empty"),
    (np.zeros((32, 32, 3), dtype=np.int16), "uint8 in"),
    (np.full((32, 32, 3), -0.5, dtype=np.float32), r"float NumPy pixels must lie in \[0, 1\]"),
    (np.full((32, 32, 3), np.nan, dtype=np.float32), "NaN or infinite"),
    (np.zeros((32, 32, 4), dtype=np.uint8), "NumPy images must be"),
    ([torch.zeros(3, 32, 32), torch.zeros(3, 16, 16)], "one shape to stack"),
    ([np.zeros((32, 32, 3), np.uint8), np.zeros((2, 32, 32, 3), np.uint8)], "one shape to stack"),
    ([torch.zeros(1, 1, 3, 32, 32)], r"\(3, H, W\) images or \(F, 3, H, W\) videos"),
    ([torch.zeros(3, 32, 32), torch.zeros(3, 32, 32, dtype=torch.uint8)], "several dtypes"),
    ("image.png", "images must be"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint16), "unsupported dtype torch.uint16"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.float8_e4m3fn), "unsupported dtype"),
    (torch.zeros(1, 3, 32, 32).to_sparse(), r"images: a sparse_coo tensor; pass a dense one \(images.to_dense"),
    (Image.new("La", (32, 32)), r"PIL cannot convert mode 'La' to RGB .*\(im.convert\(\"LA\"\)\)"),
])
def test_bad_images(tiny_kl, images, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        decinv_fast.invert(tiny_kl, images, steps=1)
    assert "images" in str(info.value)


def test_unit_range_float_tensors_warn_at_the_caller_s_line(tiny_kl):
    """Float tensors are [-1, 1]; a pipeline's output_type='pt' is [0, 1]: a tensor wholly inside
    [0, 1] gets a warning (at the caller's line, through invert and through no_grad-decorated encode)."""
    unit = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for call in (lambda: decinv_fast.invert(tiny_kl, unit, steps=1), lambda: decinv_fast.encode(tiny_kl, unit)):
        with pytest.warns(UserWarning, match="output_type='pt'") as seen:
            call()
        assert {w.filename for w in seen if "output_type" in str(w.message)} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decinv_fast.encode(tiny_kl, unit * 2 - 1)
        decinv_fast.encode(tiny_kl, torch.zeros(1, 3, 32, 32))  # uniform mid-grey: a valid [-1, 1] image


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"), (dict(steps=-3), "steps"), (dict(steps=2.5), "steps"),
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(lr=torch.tensor(0.01)), r"lr must be .* got tensor\(0.0100\) \(a tensor: pass a Python number"),
    (dict(steps=torch.tensor(3)), r"\(a tensor: pass a Python number, e.g. .item\(\)\)"),
    (dict(method="newton"), "method"), (dict(schedule="linear"), "schedule"),
    (dict(dtype=torch.int8), "dtype"), (dict(tol=0), "tol"), (dict(backend="cudnn"), "backend"),
    (dict(method="km", alpha=1.0), "alpha"), (dict(method="adam", alpha=0.3), "alpha"),
    (dict(method="fsm", lr=1.0, rho=0.5), "rho"), (dict(chunk_frames=0), "chunk_frames"),
    (dict(method="km", alpha="0.3"), "alpha"), (dict(method="adam", betas=0.9), "betas must be a pair"),
    (dict(method="adam", betas=("a", "b")), "betas"), (dict(method="adam", betas=(0.9, 0.99, 0.5)), "betas"),
    # on/off flags given as strings would silently mean "on"
    (dict(keep_best="no"), "keep_best must be True or False"), (dict(fp32_master="no"), "fp32_master"),
    (dict(cuda_graphs="yes"), "cuda_graphs"), (dict(progress="no"), "progress"),
    (dict(measure_memory="x"), "measure_memory"), (dict(callback=5), "callback must be callable"),
    # None is no on/off value where the default is not the method's choice (measure_memory=None meant off)
    (dict(measure_memory=None), "measure_memory must be True or False, got None"),
    (dict(progress=None), "progress must be True or False"), (dict(cuda_graphs=None), "cuda_graphs must be"),
    (dict(compile="nope"), "torch.compile backend"), (dict(compile=2), "compile"),
    # auto runs its own schedule and keeps its best: asking otherwise is refused, not ignored
    (dict(method="auto", schedule="cosine"), "method='auto' runs schedule='constant'"),
    (dict(method="auto", keep_best=False), "keep_best=True"),
    (dict(method="auto", memory=3), "method='auto' chooses its own step size and options"),  # not overridden
    (dict(method="auto", lr=0.5), "method='auto' chooses its own step size"),
    (dict(cuda_graphs=True, compile=True), "cuda_graphs=True and compile=True are alternatives"),
    # options a method does not use are refused, not ignored
    (dict(method="anderson", backend="triton"), "backend='triton' picks the fused update kernels"),
    (dict(method="auto", backend="cuda"), "backend='cuda'"), (dict(method="grad", backend="reference"), "backend"),
    (dict(method="fsm", lr="auto", backend="triton"), "backend"), (dict(method="km", mean_gain=2.0, backend="cuda"),
                                                                   "backend"),
    (dict(method="grad", compile=True), "compile works with the gradient-free methods"),
    (dict(method="grad", optimizer="lbfgs", compile="aot_eager"), "compile"),
    (dict(method="grad", fp32_master=True), "fp32_master=True"),
])
def test_bad_arguments(tiny_kl, images_32, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decinv_fast.invert(tiny_kl, images_32, **kwargs)


@pytest.mark.parametrize("kw,ran", [
    (dict(method="adam"), ("torch", 0.01, False, None)),
    (dict(method="fsm", lr=0.5, backend="reference", patience=3), ("reference", 0.5, False, 3)),
    (dict(method="auto"), ("torch", AUTO["lr"], True, AUTO["patience"])),
    (dict(method="auto", patience=1), ("torch", AUTO["lr"], True, 1)),  # auto's patience is a default only
    (dict(method="km", lr="auto"), ("torch", "auto", False, None)),
    (dict(method="anderson", backend="torch", keep_best=True), ("torch", 1.0, True, None)),
    (dict(method="grad"), ("torch", 0.01, False, None)),
])
def test_result_says_what_ran(tiny_kl, images_32, kw, ran):
    """What the call left to the method: ``backend="auto"`` on the CPU runs torch (the result says so,
    not "auto"), the default step size, keep_best and patience; and the planner's chunk."""
    out = decinv_fast.invert(tiny_kl, images_32, steps=2, measure_memory=False, chunk_frames="auto", **kw)
    assert (out.backend, out.lr, out.keep_best, out.patience) == ran
    assert out.chunk_frames == images_32.shape[0]  # the planner fits the whole tiny batch in the CPU's memory
    assert decinv_fast.invert(tiny_kl, images_32, steps=1, measure_memory=False, chunk_frames=1, **kw).chunk_frames == 1


def test_auto_accepts_what_it_runs(tiny_kl, images_32):
    plain = decinv_fast.invert(tiny_kl, images_32, method="auto", steps=3)
    same = decinv_fast.invert(tiny_kl, images_32, method="auto", steps=3, schedule="constant", keep_best=True)
    assert torch.equal(plain.latents, same.latents)


def test_not_a_vae(images_32):
    for vae in (torch.nn.Conv2d(3, 4, 1), "vae", (len,), (len, None)):
        with pytest.raises(TypeError, match="vae must be"):
            decinv_fast.invert(vae, images_32, steps=1)
    with pytest.raises(TypeError, match="vae must be"):
        decinv_fast.invert((1, 2), images_32, steps=1)


def test_a_pipeline_or_a_compiled_vae(tiny_kl, images_32):
    """A pipeline is refused with the hint to pass its VAE; torch.compile(vae) (which compiles a
    forward() that invert never calls) is unwrapped with a warning at the caller's line."""
    from diffusers import DiffusionPipeline

    class Pipeline(DiffusionPipeline):
        def __init__(self, vae):
            super().__init__()
            self.register_modules(vae=vae)

    with pytest.raises(TypeError, match="got the pipeline Pipeline: pass its VAE, pipe.vae"):
        decinv_fast.invert(Pipeline(tiny_kl), images_32, steps=1)
    with pytest.warns(UserWarning, match="compile=True") as seen:
        compiled = decinv_fast.invert(torch.compile(tiny_kl), images_32, steps=2)
    assert seen[0].filename == __file__
    assert torch.equal(compiled.latents, decinv_fast.invert(tiny_kl, images_32, steps=2).latents)


def test_a_vae_without_weights(tiny_kl, images_32):
    with torch.device("meta"):
        empty = type(tiny_kl).from_config(tiny_kl.config)
    for images in (images_32, np.zeros((32, 32, 3), np.uint8)):  # a tensor, or any other kind of images
        with pytest.raises(ValueError, match="meta device: its weights were never loaded"):
            decinv_fast.invert(empty, images, steps=1)
    for latents in (torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4, device="meta")):  # decode says it too
        with pytest.raises(ValueError, match="meta device: its weights were never loaded"):
            decinv_fast.decode(empty, latents)


def test_images_on_another_device(tiny_kl):
    meta_images = torch.zeros(1, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match="images are on meta but the VAE is on cpu"):
        decinv_fast.invert(tiny_kl, meta_images, steps=1)


def test_numpy_scalars_are_numbers_like_any_other(tiny_kl, images_32):
    """Steps, step sizes and options computed with NumPy (np.int64, np.float32) run exactly as the
    Python numbers they hold; bools and floats where an int belongs stay errors."""
    plain = decinv_fast.invert(tiny_kl, images_32, method="anderson", steps=3, lr=0.5, memory=2, chunk_frames=1)
    numpy = decinv_fast.invert(tiny_kl, images_32, method="anderson", steps=np.int64(3), lr=np.float32(0.5),
                               memory=np.int32(2), chunk_frames=np.int64(1))
    assert torch.equal(plain.latents, numpy.latents) and type(numpy.steps_run) is int
    for steps in (True, 3.0, np.float64(3)):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            decinv_fast.invert(tiny_kl, images_32, steps=steps)


@pytest.mark.parametrize("kw", [dict(), dict(method="auto"), dict(method="fsm", schedule="cosine")],
                         ids=["adam", "auto", "cosine"])
def test_steps_whose_tables_cannot_fit_are_refused_naming_steps(tiny_kl, images_32, kw, monkeypatch):
    """``steps=2**40`` with ``tol``: a ValueError naming ``steps`` before any step (it was a bare MemoryError
    from the schedule's list); a run whose up-front bytes just fit the memory there is runs."""
    with pytest.raises(ValueError, match=r"^steps=1099511627776: a run allocates its per-step table .* GiB of RAM "
                                         r"available; pass fewer steps"):
        decinv_fast.invert(tiny_kl, images_32, steps=2**40, tol=1e-3, **kw)
    method, schedule = ("anderson", "constant") if kw.get("method") == "auto" else (kw.get("method", "adam"),
                                                                                   kw.get("schedule", "paper"))
    need = loop.up_front_bytes(100, method, schedule, images_32.shape[0], torch.float32)
    monkeypatch.setattr(loop, "available_ram", lambda: need)
    assert decinv_fast.invert(tiny_kl, images_32, steps=100, tol=1e30, **kw).steps_run == 1
    with pytest.raises(ValueError, match=r"^steps=101: "):
        decinv_fast.invert(tiny_kl, images_32, steps=101, tol=1e30, **kw)


def test_divergence_is_an_error_not_nan(tiny_kl, images_32):
    told = "non-finite.*try a smaller lr; or pass keep_best=True to return each sample's best point$"
    with pytest.raises(FloatingPointError, match=told):
        decinv_fast.invert(tiny_kl, images_32, method="fsm", lr=1e30, steps=4)
    told = "non-finite.*try a smaller rho x mean_gain .*; or pass keep_best=True"  # the gain is the cause here
    with pytest.raises(FloatingPointError, match=told):
        decinv_fast.invert(tiny_kl, images_32, method="fsm", lr="auto", mean_gain=1e30, steps=4)


def test_divergence_names_the_samples_that_diverged():
    """One sample of three blows up (an elementwise codec keeps them independent): the error says
    which, so the others can be run again without it."""
    codec = (lambda x: x.clone(), lambda z: z ** 3)
    x = torch.cat([torch.full((1, 3, 4, 4), v) for v in (0.01, 1.4, 0.02)])
    with pytest.raises(FloatingPointError, match=r"in sample\(s\) \[1\] of 3; the others stayed finite"):
        decinv_fast.invert(codec, x, method="fsm", lr=1.5, schedule="constant", steps=20)


def test_half_precision_overflow_says_float32_and_force_upcast(tiny_kl, images_32):
    """A VAE whose activations overflow in fp16 (why diffusers upcasts VAEs with force_upcast) gets
    told so, not to lower a step size that never mattered."""
    assert tiny_kl.config.force_upcast
    with pytest.raises(FloatingPointError, match="smaller lr, or dtype=torch.float32 .*force_upcast"):
        decinv_fast.invert(tiny_kl, images_32, method="fsm", lr=1e30, steps=4, dtype=torch.float16)
    overflowing = copy.deepcopy(tiny_kl)
    with torch.no_grad():
        overflowing.encoder.conv_out.weight.mul_(1e6)  # E(x) beyond fp16's 65504
    steps_taken = []
    overflow = r"encoder's own output E\(x\) is non-finite in torch.float16; use dtype=torch.float32 .*force_upcast"
    with pytest.raises(FloatingPointError, match=overflow):  # at once, before any step
        decinv_fast.invert(overflowing, images_32, steps=2, dtype=torch.float16,
                           callback=lambda k, z: steps_taken.append(k))
    assert steps_taken == []
    with pytest.raises(FloatingPointError, match=overflow):
        decinv_fast.encode(overflowing, images_32, dtype=torch.float16)
    loud = copy.deepcopy(tiny_kl).half()
    with torch.no_grad():
        loud.decoder.conv_out.weight.mul_(1e6)
    with pytest.raises(FloatingPointError, match="decoder's output is non-finite in torch.float16.*force_upcast"):
        decinv_fast.decode(loud, torch.ones(1, 4, 4, 4, dtype=torch.float16))


def raises_before_any_step(vae, images, told: str, **kw) -> None:
    """``invert`` in fp16 raises ``told`` before its first step ends (the callback never runs)."""
    steps_taken = []
    with pytest.raises(FloatingPointError, match=told):
        decinv_fast.invert(vae, images, steps=3, dtype=torch.float16, callback=lambda k, z: steps_taken.append(k),
                           **kw)
    assert steps_taken == []


@pytest.mark.parametrize("kw", [dict(), dict(keep_best=True), dict(method="auto"), dict(method="grad"),
                                dict(method="grad", optimizer="lbfgs")],
                         ids=["adam", "keep_best", "auto", "grad", "lbfgs"])
def test_a_decoder_overflowing_in_half_precision_is_an_error_at_once(tiny_kl, images_32, kw):
    """D(E(x)) non-finite in fp16 is the VAE overflowing, whatever the method or keep_best: told to use float32
    before any step (it was a divergence blamed on the step size, or with keep_best a warning and E(x)
    returned); in float32 the same VAE runs."""
    loud = copy.deepcopy(tiny_kl)
    with torch.no_grad():
        loud.decoder.conv_out.weight.mul_(1e6)  # D(z) beyond fp16's 65504, E(x) finite
    told = (r"^the decoder's output D\(E\(x\)\) is non-finite in torch.float16 in sample\(s\) \[0, 1\] of 2; use "
            r"dtype=torch.float32 .*force_upcast")
    raises_before_any_step(loud, images_32, told, **kw)
    run = decinv_fast.invert(loud, images_32, steps=1, dtype=torch.float32, measure_memory=False, **kw)
    assert run.steps_run == 1


@pytest.mark.parametrize("kw", [dict(), dict(keep_best=True), dict(method="auto")], ids=["adam", "keep_best", "auto"])
def test_an_encoder_overflowing_on_the_first_decoding_in_half_precision_is_an_error_at_once(tiny_kl, images_32, kw):
    """E(x) and D(E(x)) finite but E(D(E(x))) non-finite in fp16: the same error at once (it was a divergence
    error, or with keep_best a warning and E(x) returned as diverged)."""
    loud = copy.deepcopy(tiny_kl)
    with torch.no_grad():
        loud.decoder.conv_out.weight.mul_(50)  # D(E(x)) up to about 110: finite in fp16, and so is its squared error
        loud.decoder.conv_out.bias.mul_(50)
        loud.encoder.conv_in.weight.mul_(3000)  # E of such pixels beyond fp16's 65504, E(x) itself finite
    told = (r"^the encoder's output E\(D\(E\(x\)\)\) is non-finite in torch.float16 in sample\(s\) \[0, 1\] of 2; "
            r"use dtype=torch.float32 .*force_upcast")
    raises_before_any_step(loud, images_32, told, **kw)
    half = loud.half()
    with torch.no_grad():
        first_decoding = decinv_fast.decode(half, decinv_fast.encode(half, images_32.half()))
    assert bool(torch.isfinite(first_decoding).all())  # the decoder is not what overflowed


@pytest.mark.parametrize("kw", [dict(keep_best=True), dict(method="auto")], ids=["keep_best", "auto"])
def test_a_half_precision_decoding_far_from_the_image_has_a_finite_pixel_error(tiny_kl, images_32, kw):
    """D(E(x)) about 1000 away from x is finite in fp16 but its square is not: the pixel error is squared in
    fp32 (it was inf, and the run stopped with "the decoder's output D(E(x)) is non-finite")."""
    loud = copy.deepcopy(tiny_kl)
    with torch.no_grad():
        loud.decoder.conv_out.weight.mul_(500)
        loud.decoder.conv_out.bias.mul_(500)
    half = copy.deepcopy(loud).half()
    first_decoding = decinv_fast.decode(half, decinv_fast.encode(half, images_32.half()))
    assert bool(torch.isfinite(first_decoding).all()) and float(first_decoding.abs().max()) > 300
    run = decinv_fast.invert(loud, images_32, steps=2, dtype=torch.float16, measure_memory=False, **kw)
    first = run.pixel_residual_history[0]
    assert bool(torch.isfinite(first).all())
    pixels = (first_decoding.float() - images_32).flatten(1).norm(dim=1) / images_32.flatten(1).norm(dim=1)
    torch.testing.assert_close(first, pixels, rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_non_finite_half_output_says_float32_and_force_upcast(tiny_kl, dtype):
    from decinv_fast.adapters import as_adapter, check_output_finite

    pixels = torch.full((1, 3, 8, 8), float("inf"), dtype=dtype)
    with pytest.raises(FloatingPointError, match=rf"non-finite in {dtype}; use dtype=torch.float32 .*force_upcast"):
        check_output_finite("decoder's output", as_adapter(tiny_kl), pixels)


@pytest.mark.parametrize("latents,match", [
    (torch.zeros(1, 3, 4, 4), "latents have 3 channels"),
    (torch.full((1, 4, 4, 4), float("nan")), "NaN or infinite"),
    (torch.zeros(3, 3), "tensor"),
    (torch.zeros(1, 4, 4, 4, device="meta"), "latents are on meta but the VAE is on cpu"),
    (torch.zeros(1, 4, 4, 4).to_sparse(), r"latents: a sparse_coo tensor; pass a dense one"),
])
def test_decode_bad_latents(tiny_kl, latents, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decinv_fast.decode(tiny_kl, latents)
    assert decinv_fast.decode(tiny_kl, torch.zeros(4, 4, 4)).shape == (3, 32, 32)


def test_nmse_db_shapes():
    a, b = torch.ones(2, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="shape"):
        decinv_fast.nmse_db(a, b[:1])
    assert decinv_fast.nmse_db(b + 1.1, a) == pytest.approx(-20.0, abs=1e-4)
    assert decinv_fast.nmse_db(b + 1.1, a, per_sample=True).shape == (2,)


def test_nmse_db_zero_truth_is_an_error_not_nan():
    truth = torch.ones(2, 4)
    truth[1] = 0  # one sample all zeros: its own NMSE is x/0, the whole batch's is defined
    with pytest.raises(ValueError, match="truth is all zeros for some sample"):
        decinv_fast.nmse_db(torch.zeros(2, 4), truth, per_sample=True)
    with pytest.raises(ValueError, match="truth is all zeros"):
        decinv_fast.nmse_db(torch.zeros(2, 4), torch.zeros(2, 4))
    assert decinv_fast.nmse_db(truth + 0.1, truth) == pytest.approx(10 * math.log10(0.08 / 4), abs=1e-4)
    assert decinv_fast.nmse_db(truth, truth) == float("-inf")  # exact: -inf dB, not an error


@pytest.mark.parametrize("scale,dtype", [(1e20, torch.float32), (1e200, torch.float64), (1e-30, torch.float64),
                                         (1e-300, torch.float64), (1e-20, torch.float32)])
def test_nmse_db_is_finite_at_any_magnitude(scale, dtype):
    """NMSE does not depend on scale: fp32 squares of 1e20 overflow and of 1e-20 underflow, but the dB do not."""
    truth = torch.full((2, 4), 2 * scale, dtype=dtype)
    assert decinv_fast.nmse_db(truth / 2, truth) == pytest.approx(-6.0206, abs=1e-4)
    per_sample = decinv_fast.nmse_db(truth / 2, truth, per_sample=True)
    assert per_sample.shape == (2,) and per_sample.tolist() == pytest.approx([-6.0206] * 2, abs=1e-4)


def test_nmse_db_needs_values_and_a_batch_to_score_per_sample():
    for shape in [(3,), ()]:
        with pytest.raises(ValueError, match=rf"per_sample=True needs \(B, ...\) tensors of at least 2 dims.*"
                           rf"got shape {re.escape(str(shape))}"):
            decinv_fast.nmse_db(torch.ones(shape), torch.ones(shape), per_sample=True)
    with pytest.raises(ValueError, match=r"truth: empty tensor \(shape \(0, 3\)\)"):
        decinv_fast.nmse_db(torch.ones(0, 3), torch.ones(0, 3))
    assert decinv_fast.nmse_db(torch.tensor(2.0), torch.tensor(1.0)) == 0.0  # one value scores as a whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "converting a tensor that requires grad to a scalar"
        assert decinv_fast.nmse_db(torch.zeros(4, requires_grad=True), torch.ones(4)) == 0.0


@pytest.mark.parametrize("mode,size,match", [("I;16", (32, 32), "PIL mode 'I;16' holds more than 8 bits"),
                                             ("F", (32, 32), "PIL mode 'F'"), ("RGB", (32, 0), "empty PIL image")])
def test_pil_images_that_would_lose_samples_or_hold_none(tiny_kl, mode, size, match):
    from PIL import Image

    with pytest.raises(ValueError, match=match):
        decinv_fast.invert(tiny_kl, Image.new(mode, size), steps=1)


def test_images_that_require_grad_run_without_autograd_warnings(tiny_kl, images_32):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = decinv_fast.invert(tiny_kl, images_32.clone().requires_grad_(), steps=1, measure_memory=False)
    assert [str(w.message) for w in seen] == []  # torch warned of a scalar read from a tensor requiring grad
    assert not result.latents.requires_grad


def test_decode_latents_that_are_no_real_floats_or_none(tiny_kl):
    z = torch.zeros(1, 4, 4, 4)
    for bad in (z > 0, z.long(), z.to(torch.complex64)):
        with pytest.raises(TypeError, match=f"latents must be a float tensor, got {bad.dtype}"):
            decinv_fast.decode(tiny_kl, bad)
    with pytest.raises(ValueError, match="latents: empty batch"):
        decinv_fast.decode(tiny_kl, z[:0])


@pytest.mark.parametrize("latents,got", [
    (np.zeros((1, 4, 4, 4), dtype=np.float32), "got a numpy.ndarray; torch.from_numpy converts it"),
    ([[0.0]], "got a builtins.list"), (torch.zeros(4, 4), r"got shape \(4, 4\)"),
])
def test_decode_says_what_it_got_instead_of_a_latent_tensor(tiny_kl, latents, got):
    with pytest.raises(ValueError, match=r"latents must be a \(C, h, w\), \(B, C, h, w\) or \(B, F, C, h, w\) tensor; "
                       + got):
        decinv_fast.decode(tiny_kl, latents)


@pytest.mark.parametrize("dtype", ["fp16", torch.int8, torch.complex64])
def test_encode_checks_dtype_as_invert_does(tiny_kl, images_32, dtype):
    with pytest.raises(ValueError, match="dtype must be one of"):
        decinv_fast.encode(tiny_kl, images_32, dtype=dtype)


def test_nmse_db_refuses_what_it_cannot_score():
    z = torch.ones(2, 4)
    for estimate, truth, error, match in [
        (z * float("nan"), z, ValueError, "estimate: 8 value"), (z, z * float("inf"), ValueError, "truth: 8 value"),
        (z.numpy(), z, TypeError, "estimate must be a real float tensor, got ndarray"),
        (z, z.to(torch.complex64), TypeError, "truth must be a real float tensor, got Tensor of torch.complex64"),
        (z, z.to("meta"), ValueError, "estimate is on cpu but truth on meta"),
    ]:
        with pytest.raises(error, match=match):
            decinv_fast.nmse_db(estimate, truth)
    with pytest.raises(ValueError, match="per_sample must be True or False"):
        decinv_fast.nmse_db(z, z, per_sample="yes")


def test_a_vae_whose_weights_mix_dtypes(tiny_kl, images_32):
    vae = copy.deepcopy(tiny_kl)
    vae.decoder.half()  # as a half-converted decoder beside an fp32 encoder would be
    for call in (lambda: decinv_fast.invert(vae, images_32, steps=1), lambda: decinv_fast.encode(vae, images_32),
                 lambda: decinv_fast.decode(vae, torch.zeros(1, 4, 4, 4))):
        with pytest.raises(TypeError, match=r"vae: its weights mix dtypes \['torch.float16', 'torch.float32'\]"):
            call()
    result = decinv_fast.invert(vae, images_32, steps=1, dtype=torch.float32)  # a converted copy runs
    assert result.latents.dtype == torch.float32 and vae.decoder.conv_in.weight.dtype == torch.float16


@pytest.mark.parametrize("broken", ["encode_fn", "decode_fn"])
def test_a_callable_pair_that_returns_no_tensor(tiny_kl, images_32, broken):
    encode_fn, decode_fn = (lambda x: decinv_fast.encode(tiny_kl, x)), (lambda z: decinv_fast.decode(tiny_kl, z))
    pair = ((lambda x: (encode_fn(x),)), decode_fn) if broken == "encode_fn" else (encode_fn, lambda z: z.numpy())
    with pytest.raises(TypeError, match=f"vae: {broken} returned (tuple|ndarray); an"):
        decinv_fast.invert(pair, images_32, steps=1)


@pytest.mark.parametrize("broken,returns", [("encode_fn", "first"), ("encode_fn", "scalar"), ("decode_fn", "first")])
def test_a_callable_pair_that_returns_no_row_per_input(tiny_kl, images_32, broken, returns):
    """A pair that drops the batch dim (one row only, or a number) is named, not a reshape error later."""
    encode_fn, decode_fn = (lambda x: decinv_fast.encode(tiny_kl, x)), (lambda z: decinv_fast.decode(tiny_kl, z))
    bad = (lambda f: (lambda t: f(t)[:1])) if returns == "first" else (lambda f: (lambda t: f(t).sum()))
    pair = (bad(encode_fn), decode_fn) if broken == "encode_fn" else (encode_fn, bad(decode_fn))
    got = r"\(\)" if returns == "scalar" else r"\(1, 4, 4, 4\)" if broken == "encode_fn" else r"\(1, 3, 32, 32\)"
    with pytest.raises(ValueError, match=rf"vae: {broken} returned shape {got} for 2 input\(s\) of shape .*; it must "
                       "return one row per input, batch first"):
        decinv_fast.invert(pair, images_32, steps=1)


def test_images_smaller_than_the_downsampling(tiny_kl):
    with pytest.raises(ValueError, match="images: height 4 and width 4: the VAE downsamples by 8, so images must be"):
        decinv_fast.invert(tiny_kl, torch.zeros(1, 3, 4, 4), steps=1)


def test_a_callable_pair_whose_decoder_goes_non_finite_is_told_to_check_it(tiny_kl, images_32):
    calls = []

    def decode_fn(z):  # finite at E(x), NaN after the first step (NaN there: test_run_outcome.py)
        calls.append(1)
        return tiny_kl.decode(z).sample * (1.0 if len(calls) == 1 else float("nan"))

    pair = (lambda x: tiny_kl.encode(x).latent_dist.mode(), decode_fn)
    with pytest.raises(FloatingPointError, match=r"smaller lr \(or check that decode_fn returns finite pixels\)"):
        decinv_fast.invert(pair, images_32, method="fsm", steps=2)
