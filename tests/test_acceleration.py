"""Beyond the paper: Anderson acceleration, automatic step size, best-iterate tracking, early stop."""

import pytest
import torch

import decinv_fast


def linear_codec(seed=0, n=3 * 8 * 8, low=0.2, high=1.8):
    """``E(D(z)) = A z`` with a known spectrum in [low, high]: D is the identity, E multiplies every
    sample (flattened) by a symmetric positive-definite ``A``. The fixed point of ``E(D(z)) = E(x)``
    is ``z = x``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = (q * torch.linspace(low, high, n, dtype=torch.float64)) @ q.T
    a = a.float()
    encode = lambda x: (x.flatten(1) @ a).view_as(x)  # noqa: E731  (A is symmetric)
    return encode, (lambda z: z)


def images(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g) * 1.6 - 0.8


def steps_to(result_history, tol):
    below = (result_history < tol).all(1).nonzero()
    return int(below[0]) + 1 if len(below) else None


def test_anderson_with_no_memory_is_the_forward_step(tiny_kl, images_32):
    fsm = decinv_fast.invert(tiny_kl, images_32, method="fsm", lr=0.7, steps=6, schedule="constant")
    aa0 = decinv_fast.invert(tiny_kl, images_32, method="anderson", lr=0.7, memory=0, steps=6, schedule="constant")
    assert torch.equal(aa0.latents, fsm.latents)


def test_anderson_converges_much_faster_on_a_linear_map():
    """Spectrum of E∘D in [0.05, 1.95]: the forward step contracts by 0.95 a step (~250 steps to
    1e-6); Anderson with m = 8 needs ~40."""
    codec, x = linear_codec(low=0.05, high=1.95), images()
    kw = dict(steps=300, schedule="constant", tol=1e-6)
    fsm = decinv_fast.invert(codec, x, method="fsm", lr=1.0, **kw)
    aa = decinv_fast.invert(codec, x, method="anderson", lr=1.0, memory=8, **kw)
    n_fsm, n_aa = steps_to(fsm.residual_history, 1e-6), steps_to(aa.residual_history, 1e-6)
    assert n_aa is not None and n_aa <= 50
    assert n_fsm is not None and n_fsm >= 4 * n_aa
    torch.testing.assert_close(aa.latents, x, atol=1e-4, rtol=0)


def test_secant_step_size_finds_the_curvature():
    """For E(D(z)) = c z the secant step is exactly 1/c, after which one step solves the problem."""
    c = 2.5
    codec = (lambda x: c * x, lambda z: z)
    x = images()
    out = decinv_fast.invert(codec, x, method="fsm", lr="auto", steps=4, schedule="constant")
    torch.testing.assert_close(out.latents, c * x / c, atol=1e-5, rtol=0)
    assert out.residual_history[2:].max() < 1e-5


def test_keep_best_returns_the_argmin_of_the_pixel_error(tiny_kl, images_32):
    seen = []
    out = decinv_fast.invert(tiny_kl, images_32, method="fsm", lr=1.5, steps=8, schedule="constant",
                             keep_best=True, callback=lambda k, z: seen.append(z.clone()))
    best = out.pixel_residual_history.argmin(0)
    assert torch.equal(out.returned_step, best)
    evaluated = [decinv_fast.encode(tiny_kl, images_32)] + seen  # point k is z_k (z_0 = E(x))
    for b in range(images_32.shape[0]):
        assert torch.equal(out.latents[b], evaluated[int(best[b])][b])


def test_patience_and_tol_stop_each_sample(tiny_kl):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    out = decinv_fast.invert(tiny_kl, x, method="fsm", lr=1.5, steps=30, schedule="constant", patience=2)
    for b, reason in enumerate(out.stop_reason):
        if reason == "patience":
            stop = int(out.stopped_at[b])
            best = int(out.pixel_residual_history[:stop, b].argmin())
            assert stop - 1 - best == 2  # two evaluations without improvement, then stop
    tol = float(out.residual_history[3].median())
    out = decinv_fast.invert(tiny_kl, x, method="adam", steps=30, tol=tol)
    for b, reason in enumerate(out.stop_reason):
        stop = int(out.stopped_at[b])
        if reason == "tol":
            assert out.residual_history[stop - 1, b] < tol
            assert (out.residual_history[: stop - 1, b] >= tol).all()
            assert int(out.returned_step[b]) == stop - 1
    assert out.steps_run == int(out.stopped_at.max())


@pytest.mark.parametrize("kw", [
    dict(method="anderson", memory=3, lr="auto", schedule="constant", keep_best=True, tol=1e-3),
    dict(method="km", lr="auto", schedule="constant", tol=1e-3),
    dict(method="fsm", schedule="constant", keep_best=True, tol=1e-2),
    dict(method="auto", tol=1e-3),
])
def test_batch_equals_one_by_one_with_tracking(kw):
    """Samples stop at different steps (masking); each equals a run on it alone."""
    codec = linear_codec(low=0.05, high=1.95)
    x = images(n=3, seed=7) * torch.tensor([1.0, 0.3, 0.05]).view(3, 1, 1, 1)
    batch = decinv_fast.invert(codec, x, steps=40, **kw)
    for i in range(3):
        one = decinv_fast.invert(codec, x[i:i + 1], steps=40, **kw)
        # batched least squares round differently from single ones: close, not bit-equal
        torch.testing.assert_close(batch.latents[i:i + 1], one.latents, rtol=1e-3, atol=1e-4)
        assert batch.stop_reason[i] == one.stop_reason[0]
        assert int(batch.returned_step[i]) == int(one.returned_step[0])
        assert int(batch.stopped_at[i]) == int(one.stopped_at[0])


def test_batch_close_to_one_by_one_on_a_vae(tiny_kl):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    batch = decinv_fast.invert(tiny_kl, x, method="auto", steps=6)
    for i in range(2):
        one = decinv_fast.invert(tiny_kl, x[i:i + 1], method="auto", steps=6)
        torch.testing.assert_close(batch.latents[i:i + 1], one.latents, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="anderson", memory=-1), "memory"), (dict(method="anderson", memory=2.5), "memory"),
    (dict(method="fsm", rho=0.0), "rho"), (dict(method="anderson", rho=-1.0), "rho"),
    (dict(patience=0), "patience"), (dict(method="adam", lr="auto"), "auto"),
    (dict(method="auto", lr=0.1), "auto"), (dict(method="anderson", cuda_graphs=True), "cuda_graphs"),
])
def test_bad_options(tiny_kl, images_32, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decinv_fast.invert(tiny_kl, images_32, steps=2, **kwargs)


def test_tracking_survives_graph_warmup_and_replay(tiny_kl, images_32):
    """The tracker updates its buffers in place, so the captured step (warmed up, restored and replayed)
    gives the eager result."""
    kw = dict(method="fsm", lr=1.5, steps=6, schedule="constant", keep_best=True, patience=2)
    eager = decinv_fast.invert(tiny_kl, images_32, **kw)
    graphed = decinv_fast.invert(tiny_kl, images_32, cuda_graphs=True, **kw)
    assert torch.equal(graphed.latents, eager.latents)
    assert torch.equal(graphed.returned_step, eager.returned_step)
    assert graphed.stop_reason == eager.stop_reason
