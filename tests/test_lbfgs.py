"""``method="grad", optimizer="lbfgs"``: per-sample L-BFGS with a backtracking line search."""

import copy

import pytest
import torch

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter
from decinv_fast.protocol import make_target
from decinv_fast.testbed import heldout_crops

LBFGS = dict(method="grad", optimizer="lbfgs")


def quadratic_codec(seed=0, n=3 * 8 * 8, low=0.1, high=1.0):
    """``D(z) = A z`` (every sample flattened) with ``A`` symmetric positive definite, spectrum in
    [low, high]: the pixel error is a quadratic whose Hessian has condition number (high/low)^2.
    ``E`` is the identity, so the search starts at ``z = x``, not at the answer ``A^-1 x``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = (q * torch.linspace(low, high, n, dtype=torch.float64)) @ q.T
    decode = lambda z: (z.flatten(1) @ a.to(z.dtype)).view_as(z)  # noqa: E731  (A is symmetric)
    return (lambda x: x.clone()), decode, a


def images(n=2, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8).to(dtype)


def test_matches_the_reference_in_float64(tiny_kl, images_32):
    vae = copy.deepcopy(tiny_kl).double()
    x = images_32.double()
    adapter = as_adapter(vae)
    ref = reference.gradient_based_lbfgs(adapter.encode, lambda z: adapter.decode(z, 1), x, steps=10, lr=0.05)
    out = decinv_fast.invert(tiny_kl, x, steps=10, lr=0.05, dtype=torch.float64, **LBFGS)
    torch.testing.assert_close(out.latents, ref.latents, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.residual_history, torch.stack(ref.residuals).float(), rtol=1e-6, atol=0)


def test_float64_keeps_improvements_below_fp32_resolution():
    """With ``x`` outside the range of a rank-deficient ``D``, the objective levels off at a positive
    value and late float64 improvements are smaller than fp32's resolution of it: the best point must
    still be judged in float64, as the reference does, not the first point fp32 cannot tell apart."""
    g = torch.Generator().manual_seed(0)
    n = 3 * 8 * 8
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    spectrum = torch.linspace(0.1, 1.0, n, dtype=torch.float64)
    spectrum[: n // 4] = 0.0
    a = (q * spectrum) @ q.T
    encode, decode = (lambda x: x.clone()), (lambda z: (z.flatten(1) @ a.to(z.dtype)).view_as(z))
    x = images(1)
    ref = reference.gradient_based_lbfgs(encode, decode, x, steps=60, lr=0.1)
    out = decinv_fast.invert((encode, decode), x, steps=60, lr=0.1, **LBFGS)
    assert int(out.returned_step[0]) > 30
    torch.testing.assert_close(out.latents, ref.latents, rtol=0, atol=1e-7)
    stopped = decinv_fast.invert((encode, decode), x, steps=60, lr=0.1, patience=3, **LBFGS)
    assert int(stopped.stopped_at[0]) > 25


def test_reference_and_engine_on_degenerate_images():
    """An all-zero image (uniform mid-grey) has absolute pixel errors in both; a decoder that is not
    finite even at ``E(x)`` gives inf residuals in the reference and an error in the engine."""
    encode = lambda x: x.clone()  # noqa: E731
    zero = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    decode = lambda z: z * 0.5 + 0.01  # noqa: E731
    ref = reference.gradient_based_lbfgs(encode, decode, zero, steps=3)
    out = decinv_fast.invert((encode, decode), zero, steps=3, **LBFGS)
    assert float(ref.residuals[0][0]) == pytest.approx(0.01 * 48 ** 0.5)
    torch.testing.assert_close(out.residual_history[:, 0], torch.stack(ref.residuals)[:, 0].float())
    broken = lambda z: z * float("inf")  # noqa: E731
    assert all(float(r[0]) == float("inf") for r in reference.gradient_based_lbfgs(encode, broken, zero + 0.3,
                                                                                     steps=3).residuals)
    with pytest.raises(FloatingPointError):
        decinv_fast.invert((encode, broken), zero + 0.3, steps=3, **LBFGS)


def test_batch_equals_one_by_one(tiny_kl, images_32):
    kw = dict(steps=8, lr=0.05, dtype=torch.float64, **LBFGS)
    batch = decinv_fast.invert(tiny_kl, images_32.double(), **kw)
    for b in range(images_32.shape[0]):
        alone = decinv_fast.invert(tiny_kl, images_32[b:b + 1].double(), **kw)
        torch.testing.assert_close(batch.latents[b:b + 1], alone.latents, rtol=1e-10, atol=1e-12)
        assert int(batch.returned_step[b]) == int(alone.returned_step[0])


def test_solves_an_ill_conditioned_quadratic_far_faster_than_adam():
    """Hessian condition number 100: in 100 decoder passes L-BFGS with 5 pairs reaches the minimiser
    ``A^-1 x`` (about 2e-8 away); Adam with as many passes is still about 5e-3 away."""
    encode, decode, a = quadratic_codec()
    x = images()
    answer = torch.linalg.solve(a, x.flatten(1).T).T.reshape(x.shape)
    lbfgs = decinv_fast.invert((encode, decode), x, steps=100, lr=0.1, **LBFGS)
    adam = decinv_fast.invert((encode, decode), x, method="grad", steps=100, lr=0.1, schedule="constant")
    lbfgs_error = float((lbfgs.latents - answer).norm() / answer.norm())
    adam_error = float((adam.latents - answer).norm() / answer.norm())
    assert lbfgs_error < 1e-6
    assert adam_error > 1000 * lbfgs_error


def test_accepted_pixel_error_never_increases_and_is_returned(tiny_kl, images_32):
    out = decinv_fast.invert(tiny_kl, images_32, steps=12, lr=0.05, **LBFGS)
    history = out.residual_history
    assert bool((history[1:] <= history[:-1]).all())
    assert history[-1].max() < history[0].min()
    first_best = (history == history.min(0).values).float().argmax(0)
    assert torch.equal(out.returned_step, first_best)


def test_tol_stops_each_sample_at_its_first_point_below_tol(tiny_kl, images_32):
    kw = dict(lr=0.05, **LBFGS)
    full = decinv_fast.invert(tiny_kl, images_32, steps=10, **kw)
    tol = float(full.residual_history[4].max())  # both samples get below it, at their own step
    out = decinv_fast.invert(tiny_kl, images_32, steps=10, tol=tol, **kw)
    assert out.stop_reason == ["tol", "tol"]
    for b in range(images_32.shape[0]):
        first = int((full.residual_history[:, b] < tol).nonzero()[0])
        assert int(out.stopped_at[b]) == first + 1
        short = decinv_fast.invert(tiny_kl, images_32, steps=first + 1, **kw)  # its accepted point then
        assert torch.equal(out.latents[b], short.latents[b])


def test_patience_stops_a_sample_whose_trials_keep_failing():
    """``D`` is non-finite everywhere but at ``E(x)``: every trial is rejected, so the pixel error
    never improves after step 0 and patience stops the run there, returning ``E(x)``."""
    decode = lambda z: torch.where((z - 0.25).abs().amax() > 0, torch.full_like(z, float("inf")), z)  # noqa: E731
    x = torch.full((1, 3, 8, 8), 0.25, dtype=torch.float64) + 0.1
    encode = lambda p: torch.full_like(p, 0.25)  # noqa: E731
    out = decinv_fast.invert((encode, decode), x, steps=10, patience=3, **LBFGS)
    assert out.stop_reason == ["patience"] and int(out.stopped_at[0]) == 4 and int(out.returned_step[0]) == 0
    assert torch.equal(out.latents, torch.full_like(x, 0.25))


def test_chunked_frames_equal_the_whole_video(tiny_kl):
    g = torch.Generator().manual_seed(3)
    video = (torch.rand(2, 3, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1)
    kw = dict(steps=5, lr=0.05, dtype=torch.float64, **LBFGS)
    whole = decinv_fast.invert(tiny_kl, video, **kw)
    chunked = decinv_fast.invert(tiny_kl, video, chunk_frames=1, **kw)
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=1e-10, atol=1e-12)


def test_a_non_finite_trial_is_rejected_and_the_step_shrunk():
    """The decoder is non-finite beyond |z| = 1: the first trial (lr 5) lands there, is rejected, and
    the run still converges inside, where ``D`` is the identity (``E`` starts it 10% short of the answer)."""
    decode = lambda z: torch.where(z.abs().amax() > 1, torch.full_like(z, float("inf")), z)  # noqa: E731
    x = images(n=1)
    target = x * 0.5
    out = decinv_fast.invert((lambda p: p * 0.9, decode), target, steps=15, lr=5.0, **LBFGS)
    assert float(out.residual_history[1, 0]) == float(out.residual_history[0, 0]) > 0  # the trial was rejected
    assert bool(torch.isfinite(out.latents).all())
    torch.testing.assert_close(out.latents, target, atol=1e-6, rtol=0)


def test_a_non_finite_trial_shrinks_the_step_tenfold_as_the_reference_does():
    """Each non-finite trial cuts ``t`` to ``0.1 t`` (no quadratic model through a non-finite value):
    the engine's trial points, and so its accepted points, are the reference's."""
    decode = lambda z: torch.where(z.abs().amax() > 1, torch.full_like(z, float("inf")), z)  # noqa: E731
    encode, target = (lambda p: p * 0.9), images(n=1) * 0.5  # E(x) is 10% short of the answer x
    ref = reference.gradient_based_lbfgs(encode, decode, target, steps=4, lr=5.0)
    out = decinv_fast.invert((encode, decode), target, steps=4, lr=5.0, **LBFGS)
    # the first trial was rejected (the error unchanged), a later, shrunk one accepted
    assert float(ref.residuals[1][0]) == float(ref.residuals[0][0]) > 3 * float(ref.residuals[3][0])
    torch.testing.assert_close(out.latents, ref.latents, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.residual_history[:, 0], torch.stack(ref.residuals)[:, 0].float())


def test_beats_the_papers_gradient_based_adam_on_the_fixture(fixture_vae):
    target = make_target(fixture_vae, heldout_crops(size=32, count=3), seed=0)
    lbfgs = decinv_fast.invert(fixture_vae, target.images, steps=10, **LBFGS)
    adam = decinv_fast.invert(fixture_vae, target.images, method="grad", steps=10)
    assert decinv_fast.nmse_db(lbfgs.latents, target.latents) < decinv_fast.nmse_db(adam.latents, target.latents) - 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="grad", optimizer="sgd"), "optimizer"),
    (dict(method="grad", optimizer="lbfgs", memory=0), "memory"),
    (dict(method="grad", memory=3), "memory is an option of grad's optimizer='lbfgs'"),
    (dict(method="adam", optimizer="lbfgs"), "optimizer"),
])
def test_bad_options_are_named(tiny_kl, images_32, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decinv_fast.invert(tiny_kl, images_32, steps=1, **kwargs)


def test_a_trial_inside_the_armijo_margin_is_rejected():
    """``E(x) = 1`` everywhere, ``D`` the identity, ``x = 0``: the first move along ``-g`` with ``lr = 2 + 1e-4``
    lands at ``-(1 + 1e-4)``, whose error is higher than ``f`` by less than ``c1 t |<g, d>|``. Sufficient
    decrease rejects it (a bound of ``f - c1 t |<g, d>|``, not ``f + ...``), as the reference does."""
    codec = (lambda p: p + 1, lambda z: z.clone())
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    ref = reference.gradient_based_lbfgs(*codec, x, steps=3, lr=2 + 1e-4)
    out = decinv_fast.invert(codec, x, steps=3, lr=2 + 1e-4, **LBFGS)
    assert float(out.residual_history[1, 0]) == float(out.residual_history[0, 0])  # rejected: f unchanged
    assert float(ref.residuals[1][0]) == float(ref.residuals[0][0])
    torch.testing.assert_close(out.residual_history[:, 0], torch.stack(ref.residuals)[:, 0].float())
    torch.testing.assert_close(out.latents, ref.latents, rtol=0, atol=1e-12)
