"""Beyond the paper: Anderson acceleration, automatic step size, best-iterate tracking, early stop."""

import warnings

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
    encode = lambda x: (x.flatten(1) @ a.to(x.dtype)).view_as(x)  # noqa: E731  (A is symmetric)
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


@pytest.mark.parametrize("kw", [dict(method="anderson", memory=0), dict(method="anderson", memory=0, mixing="pixel"),
                                dict(method="fsm", mean_gain=1 + 1e-12)], ids=["anderson", "pixel", "gain"])
def test_torch_updates_compute_in_float64_for_float64_latents(kw):
    """The torch-update path (anderson with m = 0, or the gain path with a gain of 1 in all but name)
    is the fused forward step in float64 too: same points to fp64 rounding, converging as far."""
    codec, x = linear_codec(low=0.5, high=1.5), images().double()
    run = dict(steps=80, lr=1.0, schedule="constant")
    fsm = decinv_fast.invert(codec, x, method="fsm", **run)
    other = decinv_fast.invert(codec, x, **kw, **run)
    assert other.latents.dtype == torch.float64 and float(fsm.residuals[-1]) < 1e-14
    torch.testing.assert_close(other.latents, fsm.latents, rtol=0, atol=1e-13)
    assert float(other.residuals[-1]) < 1e-14


def test_pixel_mixing_with_no_memory_is_the_forward_step(tiny_kl, images_32):
    fsm = decinv_fast.invert(tiny_kl, images_32, method="fsm", lr=0.7, steps=6, schedule="constant")
    aa0 = decinv_fast.invert(tiny_kl, images_32, method="anderson", lr=0.7, memory=0, mixing="pixel",
                             steps=6, schedule="constant")
    assert torch.equal(aa0.latents, fsm.latents)


def dense_pixel_anderson(codec, x, steps, rho, m, mean_gain=1.0):
    """Pixel-residual Anderson written directly (no safeguard): per sample, ``gamma`` minimises
    ``||r_k - sum_i gamma_i (r_k - r_i)||`` over the last ``m`` points (differences to the newest,
    an equivalent basis of the same affine span), then ``y = y_k + g_k - sum_i gamma_i ((y_k - y_i) +
    (g_k - g_i))``, with ``g_k = -rho P T(y_k)`` (``P``: each frame's per-channel mean times
    ``mean_gain``). ``m = 0`` is the forward step. Returns every evaluated point."""
    encode, decode = codec
    encoded = encode(x)
    e_x = encoded.flatten(1).double()
    y = e_x.clone()
    points, gs, rs = [], [], []
    for _ in range(steps):
        d = decode(y.float().view_as(encoded))
        t = encode(d).double() - encoded.double()
        t = t + (mean_gain - 1) * t.mean((2, 3), keepdim=True)
        g = -rho * t.flatten(1)
        r = (d - x).flatten(1).double()
        points.append(y), gs.append(g), rs.append(r)
        ys_, gs_, rs_ = points[-(m + 1):], gs[-(m + 1):], rs[-(m + 1):]
        if len(ys_) == 1:
            y = y + g
            continue
        dr = torch.stack([r - ri for ri in rs_[:-1]], 1)
        dy = torch.stack([y - yi for yi in ys_[:-1]], 1)
        dg = torch.stack([g - gi for gi in gs_[:-1]], 1)
        gamma = torch.linalg.lstsq(dr.transpose(1, 2), r[..., None]).solution[..., 0]
        y = y + g - torch.einsum("bi,bin->bn", gamma, dy + dg)
    return points


def test_pixel_mixing_matches_a_dense_implementation(tiny_kl, images_32):
    """The engine's ring buffer of successive differences, regularised normal equations in fp32 and
    chunked residuals give the points of the plain float64 least-squares formulation."""
    from decinv_fast.adapters import as_adapter

    adapter = as_adapter(tiny_kl)  # its passes take any pixels (the public encode checks the range)
    encode, decode = adapter.encode, (lambda z: adapter.decode(z, 1))
    x = images_32
    expected = dense_pixel_anderson((encode, decode), x, steps=5, rho=0.8, m=3)
    seen = [encode(x)]
    decinv_fast.invert(tiny_kl, x, method="anderson", mixing="pixel", safeguard=False, memory=3, lr=0.8,
                       steps=4, schedule="constant", chunk_frames=1, callback=lambda k, z: seen.append(z.clone()))
    for k, (got, want) in enumerate(zip(seen, expected, strict=True)):
        torch.testing.assert_close(got.flatten(1).double(), want, rtol=2e-3, atol=2e-4, msg=f"point {k}")


def test_safeguard_rejects_a_mixed_step_that_raises_the_pixel_error():
    from decinv_fast.anderson import AndersonMixer

    y0, y1, y2 = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    g0, g1, g2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    for safeguard in (True, False):
        mixer = AndersonMixer(y0, memory=2, safeguard=safeguard)
        mixer.step(y0, g0, torch.tensor([4.0]))
        mixer.step(y1, g1, torch.tensor([2.0]))  # a mixed point comes next
        nxt = mixer.step(y2, g2, torch.tensor([3.0]))  # ...and it raised the pixel error
        if safeguard:
            assert torch.equal(nxt, y1 + g1) and int(mixer.rejected) == 1
        else:
            assert not torch.equal(nxt, y1 + g1) and int(mixer.rejected) == 0


def test_safeguard_rejects_only_a_strictly_larger_pixel_error():
    """A mixed point that decodes exactly as well as the accepted one is kept (no strict increase)."""
    from decinv_fast.anderson import AndersonMixer

    y0, y1, y2 = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    g0, g1, g2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    mixer = AndersonMixer(y0, memory=2, safeguard=True)
    mixer.step(y0, g0, torch.tensor([4.0]))
    mixer.step(y1, g1, torch.tensor([2.0]))
    nxt = mixer.step(y2, g2, torch.tensor([2.0]))  # the mixed point: as good as the accepted one
    assert not torch.equal(nxt, y1 + g1) and int(mixer.rejected) == 0


def test_keep_best_returns_the_first_of_equal_minima():
    """A decoder that ignores ``z`` gives every step the same pixel error: the best is the first point."""
    codec = (lambda x: x.clone(), lambda z: torch.zeros_like(z) + 0.25)
    out = decinv_fast.invert(codec, images(), method="fsm", lr=0.5, steps=4, schedule="constant", keep_best=True)
    assert out.returned_step.tolist() == [0, 0]
    torch.testing.assert_close(out.latents, images())


def test_tol_stops_strictly_below_it():
    """Identity encoder, decoder ``z + 0.5`` on an image of ones: the first relative residual is exactly
    0.5. ``tol=0.5`` is not reached (the rule is "below tol"); a hair above it stops after one step."""
    codec = (lambda x: x.clone(), lambda z: z + 0.5)
    x = torch.ones(1, 1, 4, 4)
    run = dict(method="fsm", lr=1e-3, steps=1, schedule="constant")
    assert decinv_fast.invert(codec, x, tol=0.5, **run).stop_reason == ["steps"]
    hair = decinv_fast.invert(codec, x, tol=0.5000001, **run)
    assert hair.stop_reason == ["tol"] and hair.stopped_at.tolist() == [1]


@pytest.mark.parametrize("mixing", ["latent", "pixel"])
def test_anderson_converges_much_faster_on_a_linear_map(mixing):
    """Spectrum of E∘D in [0.05, 1.95]: the forward step contracts by 0.95 a step (~250 steps to
    1e-6); Anderson with m = 8 needs ~40 mixing by the latent residual, ~50 by the pixel one."""
    codec, x = linear_codec(low=0.05, high=1.95), images()
    kw = dict(steps=300, schedule="constant", tol=1e-6)
    fsm = decinv_fast.invert(codec, x, method="fsm", lr=1.0, **kw)
    aa = decinv_fast.invert(codec, x, method="anderson", lr=1.0, memory=8, mixing=mixing, **kw)
    n_fsm, n_aa = steps_to(fsm.residual_history, 1e-6), steps_to(aa.residual_history, 1e-6)
    assert n_aa is not None and n_aa <= 60
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


def test_the_result_reports_each_sample_s_secant_step_size():
    """E(D(z)) = c_i z per sample: each sample's secant step 1/c_i is in ``secant_lr``; 1 before a second step;
    None without lr="auto"."""
    c = torch.tensor([2.5, 0.5]).view(2, 1, 1, 1)
    codec = (lambda x: c * x, lambda z: z)
    x = images()
    out = decinv_fast.invert(codec, x, method="anderson", lr="auto", steps=3, schedule="constant", memory=0)
    assert out.lr == "auto" and out.secant_lr.tolist() == pytest.approx([0.4, 2.0], rel=1e-5)
    assert decinv_fast.invert(codec, x, method="fsm", lr="auto", steps=1).secant_lr.tolist() == [1.0, 1.0]
    assert decinv_fast.invert(codec, x, method="fsm", lr=0.5, steps=2).secant_lr is None


@pytest.mark.parametrize("method", ["fsm", "km", "anderson"])
def test_a_stopped_sample_reports_the_secant_step_size_of_a_run_on_it_alone(method):
    """E(D(z)) = c_i z: the first sample meets tol after one step (relative residual |c - 1|), the second after
    two or three (fsm: (c - 1)²), the third runs on. The batch works out a secant step for every sample at its
    second step; the first took none (1, as alone), the others report theirs, as alone."""
    c = torch.tensor([1.0005, 1.02, 2.5])
    x = images(n=3)
    run = dict(method=method, lr="auto", tol=1e-3, steps=6, schedule="constant")
    codec = lambda c: (lambda x: c.view(-1, 1, 1, 1) * x, lambda z: z)  # noqa: E731
    batch = decinv_fast.invert(codec(c), x, **run)
    alone = [decinv_fast.invert(codec(c[i:i + 1]), x[i:i + 1], **run) for i in range(3)]
    assert batch.stopped_at.tolist() == [int(one.stopped_at[0]) for one in alone]
    assert batch.stopped_at[0] == 1 and 1 < batch.stopped_at[1] < batch.stopped_at[2]
    assert batch.secant_lr[0] == alone[0].secant_lr[0] == 1.0
    assert batch.secant_lr.tolist() == pytest.approx([float(one.secant_lr[0]) for one in alone], rel=1e-5)
    assert 0.9 < float(batch.secant_lr[1]) < 0.99  # it computed one (1 / 1.02 for fsm)


def test_secant_step_is_clipped_and_left_at_one_without_curvature():
    """``<s, t> / <t, t>`` per sample, clipped to ``[RHO_MIN, RHO_MAX]``; 1 where ``<s, t> <= 0``: ``t``
    orthogonal to ``s``, a residual that did not change (``t = 0``), or negative curvature."""
    from decinv_fast.accelerated import RHO_MAX, RHO_MIN, secant_rho

    s = torch.tensor([[1.0, 0.0]]).expand(7, 2).clone()
    t = torch.tensor([[0.5, 0.0], [100.0, 0.0], [0.001, 0.0], [0.0, 1.0], [0.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    rho = secant_rho(s, t)
    assert rho.tolist() == pytest.approx([2.0, RHO_MIN, RHO_MAX, 1.0, 1.0, 1.0, 0.5], rel=1e-6)
    assert (RHO_MIN, RHO_MAX) == (0.05, 4.0)  # the documented clip


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
    for huge in (2**63, 10**30):  # beyond int64: never stops a sample, as any patience beyond the steps
        never = decinv_fast.invert(tiny_kl, x[:1], method="fsm", steps=3, patience=huge)
        assert never.stop_reason == ["steps"] and never.steps_run == 3 and never.patience == huge
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
    dict(method="anderson", memory=3, mixing="pixel", safeguard=False, keep_best=True, tol=1e-3),
    dict(method="auto", tol=1e-3),
    dict(method="km", lr=0.3, mean_gain=2.0, schedule="constant", keep_best=True, tol=1e-3),
])
def test_batch_equals_one_by_one_with_tracking(kw):
    """Samples stop at different steps (masking); each equals a run on it alone."""
    codec = linear_codec(low=0.05, high=1.95)
    x = images(n=3, seed=7) * torch.tensor([1.0, 0.3, 0.05]).view(3, 1, 1, 1)
    batch = decinv_fast.invert(codec, x, steps=40, **kw)
    for i in range(3):
        one = decinv_fast.invert(codec, x[i:i + 1], steps=40, **kw)
        # batched least squares and convolutions round differently from single ones: close, not bit-equal
        torch.testing.assert_close(batch.latents[i:i + 1], one.latents, rtol=1e-3, atol=3e-4)
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
    (dict(method="anderson", mixing="image"), "mixing"), (dict(method="anderson", safeguard="yes"), "safeguard"),
    (dict(method="fsm", mixing="pixel"), "mixing"),
    (dict(method="fsm", residual_blur=-1.0), "residual_blur"), (dict(method="adam", residual_blur=float("nan")),
                                                               "residual_blur"),
    (dict(method="km", residual_blur=True), "residual_blur"), (dict(method="grad", residual_blur=1.0), "residual_blur"),
    (dict(method="fsm", clip_aware="yes"), "clip_aware"), (dict(method="grad", clip_aware=1), "clip_aware"),
])
def test_bad_options(tiny_kl, images_32, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decinv_fast.invert(tiny_kl, images_32, steps=2, **kwargs)


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_tracking_survives_graph_warmup_and_replay(tiny_kl, images_32, blur):
    """The tracker updates its buffers in place, so the captured step (warmed up, restored and replayed)
    gives the eager result; the residual blur is part of the captured step."""
    kw = dict(method="fsm", lr=1.5, steps=6, schedule="constant", keep_best=True, patience=2, residual_blur=blur)
    eager = decinv_fast.invert(tiny_kl, images_32, **kw)
    with pytest.warns(RuntimeWarning, match="no CUDA graphs"):  # the CPU stand-in of the capture path
        graphed = decinv_fast.invert(tiny_kl, images_32, cuda_graphs=True, **kw)
    assert torch.equal(graphed.latents, eager.latents)
    assert torch.equal(graphed.returned_step, eager.returned_step)
    assert graphed.stop_reason == eager.stop_reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_in_half_precision_mixes_in_fp32(tiny_kl, images_32, dtype):
    out = decinv_fast.invert(tiny_kl, images_32, method="auto", steps=4, dtype=dtype)
    assert out.latents.dtype == dtype and bool(torch.isfinite(out.latents).all())
    ref = decinv_fast.invert(tiny_kl, images_32, method="auto", steps=4)
    assert decinv_fast.nmse_db(out.latents.float(), ref.latents) < -20  # the same iteration, rounded


def test_gaussian_blur_matches_a_direct_convolution():
    from decinv_fast.filters import gaussian_blur, gaussian_kernel

    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.float64)
    sigma = 1.3
    k1 = gaussian_kernel(sigma, torch.float64, "cpu")
    assert abs(float(k1.sum()) - 1) < 1e-12 and k1.numel() == 2 * 4 + 1
    radius = k1.numel() // 2
    padded = torch.nn.functional.pad(images, (radius,) * 4, mode="reflect")
    kernel2d = (k1[:, None] * k1[None, :]).expand(3, 1, -1, -1)
    direct = torch.nn.functional.conv2d(padded, kernel2d, groups=3)
    torch.testing.assert_close(gaussian_blur(images, sigma), direct, rtol=0, atol=1e-12)
    flat = torch.full((1, 3, 6, 6), 0.25, dtype=torch.float64)  # smaller than the radius: replicated edges
    torch.testing.assert_close(gaussian_blur(flat, 3.0), flat, rtol=0, atol=1e-12)


def test_gaussian_blur_of_an_image_whose_side_equals_the_radius():
    """Reflection needs a pad smaller than the side: a side equal to the radius (4 at sigma 1.3) is
    replicated, one side longer is reflected; either way a constant image stays constant."""
    from decinv_fast.filters import gaussian_blur

    for height in (4, 5):
        flat = torch.full((1, 2, height, 9), 0.25, dtype=torch.float64)
        torch.testing.assert_close(gaussian_blur(flat, 1.3), flat, rtol=0, atol=1e-12)


def test_residual_blur_makes_its_taps_once():
    """The codec's blur keeps its taps per device and dtype (made on the eager warm-up call), so a
    captured CUDA graph replays it without a host-to-device copy."""
    from decinv_fast.filters import ResidualBlur, gaussian_blur

    blur = ResidualBlur(1.3)
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    first = blur(images)
    taps = blur.kernels[(images.device, images.dtype)]
    assert torch.equal(blur(images), first) and blur.kernels[(images.device, images.dtype)] is taps
    assert len(blur.kernels) == 1 and torch.equal(first, gaussian_blur(images, 1.3))


def test_residual_blur_shows_the_encoder_the_low_passed_residual(tiny_kl, images_32):
    """With ``residual_blur=s`` every encoder call after E(x) gets ``x + blur(D(z) - x)``."""
    from spy import spying_codec

    from decinv_fast.filters import gaussian_blur

    encode, decode, seen = spying_codec(tiny_kl)
    x = images_32
    for method in ("fsm", "anderson", "adam"):
        seen.clear()
        out = decinv_fast.invert((encode, decode), x, method=method, steps=2, residual_blur=1.5, keep_best=True)
        assert torch.equal(seen[0], x)  # E(x)
        z0 = decinv_fast.encode(tiny_kl, x)
        expected = x + gaussian_blur(decode(z0) - x, 1.5)
        torch.testing.assert_close(seen[1], expected, rtol=0, atol=1e-6)
        # the pixel error the stopping rule watches stays the unfiltered one
        relative = (decode(z0) - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
        torch.testing.assert_close(out.pixel_residual_history[0], relative, rtol=1e-5, atol=0)


def test_residual_blur_zero_is_the_plain_iteration(tiny_kl, images_32):
    plain = decinv_fast.invert(tiny_kl, images_32, method="fsm", steps=3)
    zero = decinv_fast.invert(tiny_kl, images_32, method="fsm", steps=3, residual_blur=0)
    assert torch.equal(plain.latents, zero.latents)
    blurred = decinv_fast.invert(tiny_kl, images_32, method="fsm", steps=3, residual_blur=1.0)
    assert not torch.equal(plain.latents, blurred.latents)


@pytest.mark.parametrize("kw,cause", [
    (dict(lr=1.5), "lr=1.5 is likely too large"),  # |1 - 1.5 * 1.8| > 1 on A's top eigenvalue
    (dict(lr=1.0, mean_gain=4.0), "rho x mean_gain = 1.0 x 4.0"),  # the channel means move 4x too far
])
def test_a_diverging_run_warns_and_keep_best_returns_the_best(kw, cause):
    codec, x = linear_codec(), images()
    run = dict(method="fsm", steps=25, schedule="constant", **kw)
    with pytest.warns(RuntimeWarning, match=rf"diverged for 2 of 2 sample\(s\).*{cause}.*keep_best=True"):
        last = decinv_fast.invert(codec, x, **run)
    assert (last.per_sample_residual > 1.5 * last.residual_history[0]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # keep_best returns the best point: nothing to warn about
        best = decinv_fast.invert(codec, x, keep_best=True, **run)
        decinv_fast.invert(codec, x, method="fsm", steps=25, schedule="constant", lr=0.9)  # converges: silent
    assert decinv_fast.nmse_db(best.latents, x) < decinv_fast.nmse_db(last.latents, x) - 20


def test_a_stopped_sample_is_reported_as_a_run_on_it_alone():
    """Sample A stops by patience after 3 steps; the batch goes on evaluating it and it later blows up.
    That must neither raise for the batch nor leak into A's residuals, which end where A's own run does."""
    codec = (lambda x: x.clone(), lambda z: z ** 3)  # elementwise: the samples are independent
    a, b = torch.full((1, 3, 4, 4), 1.4), torch.full((1, 3, 4, 4), 0.001)
    run = dict(method="fsm", lr=1.5, schedule="constant", steps=20, patience=2, keep_best=True)
    alone = [decinv_fast.invert(codec, x, **run) for x in (a, b)]
    batch = decinv_fast.invert(codec, torch.cat([a, b]), **run)
    assert batch.stop_reason == ["patience", "steps"] and batch.stopped_at.tolist() == [3, 20]
    for i, solo in enumerate(alone):
        torch.testing.assert_close(batch.latents[i:i + 1], solo.latents)
        ran = int(solo.stopped_at[0])
        for got, want in [(batch.residual_history, solo.residual_history),
                          (batch.pixel_residual_history, solo.pixel_residual_history)]:
            torch.testing.assert_close(got[:ran, i], want[:, 0])
            assert (got[ran:, i] == want[-1, 0]).all()  # the last value repeats after the stop
        torch.testing.assert_close(batch.per_sample_residual[i], solo.per_sample_residual[0])


@pytest.mark.parametrize("kw", [dict(method="fsm", mean_gain=1.5), dict(method="km", mean_gain=1.5),
                                dict(method="anderson", memory=2)])
def test_torch_updates_keep_a_fp32_master_in_fp16(fixture_vae, kw):
    """The torch-update methods in fp16 keep a fp32 master copy of the evaluation point by default, as
    the fused ones do: steps below fp16's rounding of the latents add up instead of being lost."""
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    x = decinv_fast.decode(fixture_vae, decinv_fast.encode(fixture_vae, photo))
    run = dict(lr=0.003, schedule="constant", steps=30, **kw)
    exact = decinv_fast.invert(fixture_vae, x, **run).latents
    half = x.half()
    kept = decinv_fast.invert(fixture_vae, half, dtype=torch.float16, **run)  # fp32_master=None: on for fp16
    rounded = decinv_fast.invert(fixture_vae, half, dtype=torch.float16, fp32_master=False, **run)
    assert kept.latents.dtype == torch.float16
    error_kept = decinv_fast.nmse_db(kept.latents.float(), exact)
    assert error_kept < decinv_fast.nmse_db(rounded.latents.float(), exact) - 2  # measured: 8-10 dB, anderson 2.9


def test_divergence_warning_names_the_secant_step():
    """With lr="auto" the step is each sample's secant one, not the base lr: the warning says so."""
    from decinv_fast.loop import Plan
    from decinv_fast.outcome import warn_if_residual_grew

    plan = Plan("fsm", 3, 1.0, "constant", {"auto_rho": True, "mean_gain": 3.0}, "torch", 1)
    with pytest.warns(RuntimeWarning, match=r"rho x mean_gain = the secant step \(lr='auto'\) x 3.0"):
        warn_if_residual_grew(torch.tensor([[0.05, 0.05], [0.04, 0.2], [0.03, 0.5]]), plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ends below 1.5x its start, or below the 1 % floor: no warning
        warn_if_residual_grew(torch.tensor([[0.05, 0.001], [0.07, 0.005]]), plan)
