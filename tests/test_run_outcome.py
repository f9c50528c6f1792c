"""How a run ends and what its result reports (api.py's step loop, outcome.py): the step that went
non-finite, stopped samples that blow up later, and the layout the result says ran."""

import pytest
import torch

import decinv_fast

CUBE = (lambda x: x.clone(), lambda z: z ** 3)  # elementwise: the samples are independent


def test_a_non_finite_step_is_an_error_even_with_keep_best():
    """The step whose residual went non-finite counts among the steps run, so keep_best's finite best
    point does not hide the divergence (tol makes the loop look at every step)."""
    x = torch.full((1, 3, 4, 4), 1.4)
    one = r"non-finite values in torch.float32 in sample\(s\) \[0\] of 1 \(method='fsm', lr=1.5\); try a smaller lr$"
    with pytest.raises(FloatingPointError, match=one):  # one sample of one: no "the others stayed finite"
        decinv_fast.invert(CUBE, x, method="fsm", lr=1.5, schedule="constant", steps=12, keep_best=True, tol=1e-9)


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
    with pytest.raises(FloatingPointError, match=r"torch.float64 .*\(method='grad', lr=1e\+30\); try a smaller lr$"):
        decinv_fast.invert(CUBE, x, method="grad", lr=1e30, schedule="constant", steps=4)
