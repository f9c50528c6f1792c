"""How a run ends and what its result reports (api.py's step loop, outcome.py): the step that went
non-finite, stopped samples that blow up later, and the layout the result says ran."""

import copy

import pytest
import torch

import decinv_fast

CUBE = (lambda x: x.clone(), lambda z: z ** 3)  # elementwise: the samples are independent


def test_a_non_finite_step_is_an_error_without_keep_best():
    """Without keep_best the last iterate is returned, and it is not finite: an error naming the sample
    and pointing at keep_best (tol makes the loop look at every step and stop at the first bad one)."""
    x = torch.full((1, 3, 4, 4), 1.4)
    one = (r"non-finite values in torch.float32 in sample\(s\) \[0\] of 1 \(method='fsm', lr=1.5\); try a smaller "
           r"lr \(or check that decode_fn returns finite pixels\); or pass keep_best=True to return each sample's "
           r"best point$")
    with pytest.raises(FloatingPointError, match=one):  # one sample of one: no "the others stayed finite"
        decinv_fast.invert(CUBE, x, method="fsm", lr=1.5, schedule="constant", steps=12, tol=1e-9)


DIVERGING = {  # one sample of three blows up (x = 1.4 under CUBE); the others converge or stay put
    "fsm": (dict(method="fsm", lr=1.5), (0.01, 1.4, 0.02)),
    "km": (dict(method="km", lr=1.5), (0.01, 1.4, 0.02)),
    "anderson": (dict(method="anderson", lr=1e30, memory=2), (0.0, 1.4, 0.0)),  # it tames 1.4 at lr 1.5
    "adam": (dict(method="adam", lr=1e30), (0.0, 1.4, 0.0)),  # a zero residual never moves Adam
    "grad": (dict(method="grad", lr=1e30), (0.0, 1.4, 0.0)),
}


@pytest.mark.parametrize("stops", [{}, dict(patience=50), dict(tol=1e-12)], ids=["no-sync", "patience", "tol"])
@pytest.mark.parametrize("name", DIVERGING)
def test_with_keep_best_a_diverging_sample_stops_and_the_others_run_on(name, stops):
    """With keep_best the diverging sample stops at its first non-finite evaluation (which does not count
    among its steps) and returns its best point; the batch warns, names it, and every sample's result
    equals a run on it alone, with or without a stopping rule that makes the loop look at each step."""
    kw, values = DIVERGING[name]
    run = dict(kw, schedule="constant", steps=12, keep_best=True, measure_memory=False, **stops)
    x = torch.cat([torch.full((1, 3, 4, 4), v) for v in values])
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\] of 3 after \[\d+\] step\(s\).*the others ran on"):
        batch = decinv_fast.invert(CUBE, x, **run)
    assert batch.stop_reason[1] == "diverged" and bool(torch.isfinite(batch.latents).all())
    stopped = int(batch.stopped_at[1])
    assert 0 < stopped < 12 and batch.returned_step[1] < stopped
    pixel = batch.pixel_residual_history[:stopped, 1]
    assert bool(torch.isfinite(pixel).all()) and int(batch.returned_step[1]) == int(pixel.argmin())
    for i in range(3):
        if i == 1:
            told = r"sample\(s\) \[0\] of 1 after .*\(keep_best\); try a smaller lr \(or check that decode_fn returns"
            with pytest.warns(RuntimeWarning, match=told + r" finite pixels\)$"):
                alone = decinv_fast.invert(CUBE, x[i:i + 1], **run)
        else:
            alone = decinv_fast.invert(CUBE, x[i:i + 1], **run)
        torch.testing.assert_close(batch.latents[i:i + 1], alone.latents, rtol=0, atol=0)
        assert batch.returned_step[i] == alone.returned_step[0] and batch.stopped_at[i] == alone.stopped_at[0]
        assert batch.stop_reason[i] == alone.stop_reason[0]
        torch.testing.assert_close(batch.residual_history[:alone.steps_run, i], alone.residual_history[:, 0])


@pytest.mark.parametrize("name", ["fsm", "km", "adam"])
def test_a_diverging_sample_under_cuda_graphs_ends_as_without(name):
    """cuda_graphs=True (on the CPU: its warm-up and fallback path) captures the tracker's divergence stop
    as every other buffer: the same latents, stops and reasons as the eager run."""
    kw, values = DIVERGING[name]
    run = dict(kw, schedule="constant", steps=12, keep_best=True, measure_memory=False, patience=50)
    x = torch.cat([torch.full((1, 3, 4, 4), v) for v in values])
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\] of 3"):
        eager = decinv_fast.invert(CUBE, x, **run)
    with pytest.warns(RuntimeWarning) as seen:
        graphed = decinv_fast.invert(CUBE, x, cuda_graphs=True, **run)
    told = sorted(str(w.message)[:40] for w in seen)
    assert told == ["cuda_graphs=True on a cpu device: there ", "inversion diverged: non-finite values in"]
    assert torch.equal(graphed.latents, eager.latents) and graphed.stop_reason == eager.stop_reason
    assert graphed.stopped_at.tolist() == eager.stopped_at.tolist() and eager.stop_reason[1] == "diverged"


@pytest.mark.parametrize("stops", [{}, dict(patience=50)], ids=["no-sync", "patience"])
def test_a_residual_non_finite_at_the_last_step_is_a_divergence_too(stops):
    """The encoder alone fails (D(z_2) = 6.2 is beyond its range), so step 2's residual is NaN while its
    pixel error is finite: the tracker sees it only at the next evaluation, which a 3-step run never makes.
    The result marks it diverged all the same, as a longer run, which stops there, does; the other sample
    runs on (a NaN residual of a running sample does not end a keep_best run)."""
    codec = (lambda x: torch.where(x.abs() > 5, float("nan"), x), lambda z: z ** 3)  # z: 1.4, -0.62, 1.83, NaN
    x = torch.cat([torch.full((1, 3, 4, 4), v) for v in (0.01, 1.4)])
    results = []
    for steps in (3, 6):
        with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\] of 2 after \[3\] step\(s\)"):
            results.append(decinv_fast.invert(codec, x, method="fsm", lr=1.5, schedule="constant", steps=steps,
                                              keep_best=True, measure_memory=False, **stops))
    short, long = results
    assert short.stop_reason == ["steps", "diverged"] and long.stop_reason == ["steps", "diverged"]
    assert long.steps_run == long.stopped_at[0] == 6
    assert short.stopped_at[1] == long.stopped_at[1] == 3 and bool(torch.isnan(long.residual_history[2:, 1]).all())
    torch.testing.assert_close(short.latents[1], long.latents[1], rtol=0, atol=0)
    assert short.returned_step[1] == long.returned_step[1] == 0  # 1.4 decodes closest to 1.4 (2.74, -0.23, 6.2)


def test_a_last_update_that_overflows_is_an_error():
    """Every evaluated point is finite, but the last update (never evaluated) overflows fp32: the returned
    latents are checked too."""
    x = torch.full((2, 3, 4, 4), -0.5)
    with pytest.raises(FloatingPointError, match=r"in sample\(s\) \[0, 1\] of 2 \(method='fsm'"):
        decinv_fast.invert(CUBE, x, method="fsm", lr=1e39, schedule="constant", steps=1)


def test_a_sample_blowing_up_right_after_its_stop_does_not_end_the_batch():
    """Sample A stops by patience after 2 steps and its very next evaluation is infinite: that point is no
    longer A's, so the batch runs on and B gets all its steps, as alone."""
    codec = (lambda x: x.clone(), lambda z: torch.where(z.abs() < 1.7, z ** 3, float("inf")))
    a, b = torch.full((1, 3, 4, 4), 1.4), torch.full((1, 3, 4, 4), 0.001)  # A: 1.4 -> -0.62 -> 1.84 (inf)
    run = dict(method="fsm", lr=1.5, schedule="constant", steps=8, patience=1, keep_best=True)
    batch = decinv_fast.invert(codec, torch.cat([a, b]), **run)
    assert batch.steps_run == 8 and batch.stopped_at.tolist() == [2, 8]
    torch.testing.assert_close(batch.latents[1:], decinv_fast.invert(codec, b, **run).latents)


def test_a_run_without_stopping_rules_reports_its_last_point_and_layout():
    """No keep_best, tol or patience: each sample returns ``z_steps``, reported as step ``steps``; a chunk
    larger than the batch is reported as the batch it ran in."""
    x = torch.zeros(2, 3, 4, 4)
    out = decinv_fast.invert(CUBE, x, steps=3, chunk_frames=5, measure_memory=False)
    assert out.returned_step.tolist() == out.stopped_at.tolist() == [3, 3] and out.stop_reason == ["steps"] * 2
    assert out.chunk_frames == 2


def test_the_batch_residual_is_the_norm_over_the_whole_batch():
    """``residuals[k] = ||T(z_k)|| / ||E(x)||`` over all samples together: at ``z_0 = x`` (identity
    encoder) that is ``||x^3 - x|| / ||x||``."""
    x = torch.stack([torch.full((3, 4, 4), -0.2), torch.full((3, 4, 4), 0.9)])
    out = decinv_fast.invert(CUBE, x, method="fsm", lr=0.5, steps=2, measure_memory=False)
    torch.testing.assert_close(out.residuals[0], (x ** 3 - x).norm() / x.norm())


def test_a_diverging_auto_run_is_named_auto_and_pointed_at_anderson():
    """auto's step size and options are not the caller's to lower: its warning names auto, says what it ran
    and points at anderson (as the command line words it too), and the result says auto."""
    from decinv_fast import cli

    codec = (lambda x: x.clone(), lambda z: torch.sinh(3 * z))  # elementwise; the sample at 0.9 blows up
    x = torch.cat([torch.full((1, 3, 8, 8), v) for v in (-0.01, 0.9, -0.02)])
    told = (r"sample\(s\) \[1\] of 3 after \[\d+\] step\(s\) \(method='auto'\); .*; method='auto' \(anderson at "
            r"lr 0.7 with mean_gain 3.0\) steps too far for this VAE: try method='anderson' with a smaller lr")
    with pytest.warns(RuntimeWarning, match=told) as seen:
        result = decinv_fast.invert(codec, x, method="auto", steps=20, measure_memory=False)
    assert result.method == "auto" and result.stop_reason[1] == "diverged" and "method='auto'" in repr(result)
    worded = cli.flag_names(str(next(w.message for w in seen if "diverged" in str(w.message))))
    assert "(--method auto);" in worded and "try --method anderson with a smaller --lr" in worded


def test_a_divergence_warning_names_the_worst_sample_at_the_caller_s_line():
    """Both samples grow (steps of factor 1 - 1.2 c); the one with the larger growth is named."""
    codec = (lambda x: x.clone(), lambda z: z * torch.tensor([1.9, 2.2]).view(2, 1, 1, 1))
    x = torch.full((2, 3, 4, 4), -0.5)
    with pytest.warns(RuntimeWarning, match=r"diverged for 2 of 2 sample\(s\).*\(sample 1: ") as seen:
        decinv_fast.invert(codec, x, method="fsm", lr=1.2, schedule="constant", steps=6, measure_memory=False)
    assert [w.filename for w in seen if "diverged" in str(w.message)] == [__file__]



def test_a_diverging_fp64_gradient_run_is_told_to_take_a_smaller_lr():
    """Half precision's underflow is grad's likeliest cause in fp16/bf16 only: an fp64 run that diverges was told
    to use float32, a step down."""
    x = torch.full((1, 3, 4, 4), -0.5, dtype=torch.float64)
    told = r"torch.float64 .*\(method='grad', lr=1e\+30\); try a smaller lr \(or check that decode_fn .*\); or pass"
    with pytest.raises(FloatingPointError, match=told):
        decinv_fast.invert(CUBE, x, method="grad", lr=1e30, schedule="constant", steps=4)


@pytest.mark.parametrize("kw", [dict(method="fsm"), dict(method="grad", optimizer="lbfgs")], ids=["fsm", "lbfgs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_sample_whose_first_decoding_is_non_finite_returns_its_encoding(kw, dtype):
    """D(E(x)) itself is NaN for sample 1: with keep_best it stops after 0 steps and returns E(x) (here x),
    the only point it has, and the batch's residual curve is the other sample's; L-BFGS, which rejects
    non-finite trials, is no different at its first point.
    Without keep_best that is an error, as for any divergence. A pair's decode_fn may be undefined there, in
    half precision too (a VAE's overflowing there is an error at once: test_bad_inputs.py)."""
    codec = (lambda x: x.clone(), lambda z: torch.where(z > 1, float("nan"), z ** 3))
    x = torch.cat([torch.full((1, 3, 4, 4), v, dtype=dtype) for v in (0.5, 1.4)])
    run = dict(kw, lr=0.5, schedule="constant", steps=4, measure_memory=False)
    start = (r"first evaluation, D\(E\(x\)\) or E\(D\(E\(x\)\)\), is non-finite before any step .*decode_fn is "
             r"defined at E\(x\)")
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\] of 2 after \[0\] step\(s\).*" + start):
        out = decinv_fast.invert(codec, x, keep_best=True, **run)
    assert out.stop_reason[1] == "diverged" and out.stopped_at.tolist() == [4, 0] and out.returned_step[1] == 0
    torch.testing.assert_close(out.latents[1], x[1], rtol=0, atol=0)
    alone = decinv_fast.invert(codec, x[:1], keep_best=True, **run)  # the batch's curve leaves the diverged one out
    torch.testing.assert_close(out.residuals, alone.residuals)
    assert bool(torch.isfinite(out.residuals).all())
    with pytest.raises(FloatingPointError, match=r"in sample\(s\) \[1\] of 2; the others stayed finite.*" + start):
        decinv_fast.invert(codec, x, **run)


def test_a_vae_whose_first_decoding_is_non_finite_in_fp32_is_not_told_to_lower_lr(tiny_kl, images_32):
    """No step size makes D(E(x)) non-finite: the hint points at the VAE's weights (in half precision that is an
    error at once, test_bad_inputs.py)."""
    broken = copy.deepcopy(tiny_kl)
    with torch.no_grad():
        broken.decoder.conv_out.bias[0] = float("nan")
    told = r"non-finite before any step \(no step size causes that\): check the VAE's weights"
    with pytest.raises(FloatingPointError, match=told + "; or pass keep_best=True"):
        decinv_fast.invert(broken, images_32, method="fsm", steps=3, measure_memory=False)
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[0, 1\] of 2 after \[0, 0\] step\(s\).*" + told + "$"):
        out = decinv_fast.invert(broken, images_32, method="auto", steps=3, measure_memory=False)
    assert out.stop_reason == ["diverged", "diverged"] and out.returned_step.tolist() == [0, 0]


def test_a_non_finite_sample_does_not_reach_the_others_through_a_diffusers_vae(tiny_kl):
    """What lets a keep_best batch run on past a diverged sample: the VAE's layers (convolutions, group norm,
    mid-block attention) keep samples apart, so a NaN/inf sample leaves the others' bits as a finite one does."""
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        for bad in (float("nan"), float("inf")):
            poisoned_z, poisoned_x = z.clone(), x.clone()
            poisoned_z[1], poisoned_x[1] = bad, bad
            decoded = tiny_kl.decode(poisoned_z).sample
            assert torch.equal(decoded[0], tiny_kl.decode(z).sample[0]) and not bool(torch.isfinite(decoded[1]).any())
            encoded = tiny_kl.encode(poisoned_x).latent_dist.mode()
            assert torch.equal(encoded[0], tiny_kl.encode(x).latent_dist.mode()[0])
