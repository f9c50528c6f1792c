"""Tree-ring watermark: key and injection, the null distribution of the statistic, ROC summaries,
and detection through generation -> 8-bit PNG -> full inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusion_models import LinearPatchVae, noise, sd_scheduler, tiny_unet
from PIL import Image

from decinv_fast.diffusion import Schedule, bdia_sample, invert_to_noise
from decinv_fast.watermark import (
    detect,
    frequency_radius,
    generate,
    inject,
    log_ncf_cdf,
    log_ncx2_cdf,
    make_ring_key,
    noise_statistic,
    roc_auc,
    save_images,
    score_noise,
    to_uint8,
    tpr_at_fpr,
)
from decinv_fast.watermark.key import fourier
from decinv_fast.watermark.stats import _log_beta_inc


def test_ring_key_layout():
    key = make_ring_key((4, 64, 64))
    assert (key.channel, key.radius) == (3, 10)  # the paper's Stable Diffusion setting
    assert key.size == int((frequency_radius(64, 64) <= 10).sum())
    small = make_ring_key((4, 16, 16), radius=3, channel=1, seed=5)
    dist = frequency_radius(16, 16)
    assert small.size == 29 and torch.equal(small.mask, dist <= 3)
    for j, v in enumerate(small.ring_values.tolist(), start=1):  # constant on every ring, zero outside
        ring = small.mask & (torch.ceil(dist).clamp(min=1) == j)
        assert ring.any() and torch.all(small.values[ring] == v)
    assert torch.all(small.values[~small.mask] == 0)
    # symmetric under k -> -k, so the key is Hermitian (real ring values)
    flipped = torch.roll(torch.flip(small.values, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    assert torch.equal(flipped, small.values)
    assert torch.equal(make_ring_key((4, 16, 16), radius=3, seed=5).values, small.values)  # seeded
    assert not torch.equal(make_ring_key((4, 16, 16), radius=3, seed=6).values, small.values)


def test_frequency_radius_of_a_non_square_latent():
    """Each axis has its own signed integer frequencies: a 4x6 grid has rows 0, 1, -2, -1 and columns 0..2, -3..-1."""
    dist = frequency_radius(4, 6)
    assert dist.shape == (4, 6) and dist.dtype == torch.float64
    assert dist[0].tolist() == [0, 1, 2, 3, 2, 1] and dist[:, 0].tolist() == [0, 1, 2, 1]
    assert dist[1, 3] == pytest.approx(math.sqrt(10))
    key = make_ring_key((1, 6, 10), radius=2)
    assert key.size == 13 and torch.equal(key.mask, frequency_radius(6, 10) <= 2)


def test_injection_is_real_and_exact_fp64():
    key = make_ring_key((4, 16, 16), radius=3)
    z = noise((3, 4, 16, 16), torch.float64)
    keyed = inject(z, key)
    assert keyed.dtype == torch.float64 and torch.equal(keyed[:, :3], z[:, :3])
    before = torch.fft.fft2(z[:, 3], norm="ortho")
    after = torch.fft.fft2(keyed[:, 3], norm="ortho")
    assert torch.allclose(after[:, key.mask], key.values[key.mask].to(after.dtype), atol=1e-12)
    assert torch.allclose(after[:, ~key.mask], before[:, ~key.mask], atol=1e-12)
    stats = noise_statistic(keyed, key, noise_std=1.0)
    assert torch.all(stats["distance"] < 1e-20) and torch.all(stats["log10_p"] < -30)
    keyed32 = inject(z.float(), key)
    assert keyed32.dtype == torch.float32


def test_ncx2_cdf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for x, df, nc in [(5.0, 13, 10.0), (0.5, 29, 30.0), (1e-3, 49, 50.0), (60.0, 49, 40.0), (20.0, 5, 0.0),
                      (300.0, 317, 310.0), (300.0, 317, 0.0)]:
        ref = stats.ncx2.logcdf(x, df, nc) if nc > 0 else stats.chi2.logcdf(x, df)
        assert log_ncx2_cdf(x, df, nc) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert log_ncx2_cdf(1e-6, 317, 300.0) < -1000  # far below float64's smallest p, still finite
    assert log_ncx2_cdf(0.0, 3, 1.0) == -math.inf
    for x, df, nc in [(2600.0, 5, 0.1), (260.0, 1, 30.0), (1300.0, 2, 30.0)]:  # sums of ~1: p <= 1
        assert log_ncx2_cdf(x, df, nc) <= 0.0
    assert log_ncf_cdf(520.0, 5, 227, 0.1) <= 0.0 and log_ncf_cdf(100.0, 5, 227, 0.1) <= 0.0


def _mp_mixture(lam, central, mpmath):
    """``log sum_j Pois(j; lam) central(j)`` in 40-digit arithmetic (the reference for the deep tails)."""
    lam = mpmath.mpf(lam)
    top = int(lam + 20 * (lam + 1) ** 0.5 + 60)
    terms = (mpmath.exp(-lam) * lam**j / mpmath.factorial(j) * central(j) for j in range(top))
    return float(mpmath.log(mpmath.fsum(terms)))


def test_ncx2_cdf_far_tail_with_a_large_noncentrality():
    """In a far lower tail the mixture's small-index terms dominate even when nc/2 is hundreds."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for x, df, nc in [(1e-2, 317, 1000.0), (1e-6, 317, 300.0), (50.0, 100, 600.0)]:
        ref = _mp_mixture(nc / 2, lambda j, df=df, x=x: mpmath.gammainc(df / 2 + j, 0, x / 2, regularized=True), mpmath)
        assert log_ncx2_cdf(x, df, nc) == pytest.approx(ref, rel=1e-10)


def test_incomplete_beta_matches_scipy_and_mpmath():
    special = pytest.importorskip("scipy.special")
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for a in (0.5, 1.0, 14.5, 300.0):
        for b in (0.5, 17.5, 113.5):
            for x in (1e-12, 1e-3, 0.2, 0.5, 0.8, 0.999):
                got = _log_beta_inc(a, b, x, 1 - x)
                ref = math.log(special.betainc(a, b, x)) if special.betainc(a, b, x) > 1e-300 else None
                deep = float(mpmath.log(mpmath.betainc(a, b, 0, x, regularized=True)))
                assert got == pytest.approx(deep, rel=1e-11, abs=1e-13)
                if ref is not None:
                    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert _log_beta_inc(2.0, 3.0, 0.0, 1.0) == -math.inf and _log_beta_inc(2.0, 3.0, 1.0, 0.0) == 0.0


def test_ncf_cdf_matches_scipy_and_the_deep_tail():
    """Against scipy.stats.ncf where it is finite, and 40-digit mpmath where scipy underflows (p << 1e-300)."""
    stats = pytest.importorskip("scipy.stats")
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    grid = [(f, d1, d2, nc) for f in (1e-8, 1e-3, 0.05, 0.3, 1.0, 2.5, 20.0)
            for d1, d2, nc in ((29, 35, 88.5), (29, 35, 2.8), (13, 51, 0.0), (29, 227, 30.0), (5, 5, 1.0))]
    for f, d1, d2, nc in grid:
        ref = stats.ncf.logcdf(f, d1, d2, nc) if nc > 0 else stats.f.logcdf(f, d1, d2)
        assert log_ncf_cdf(f, d1, d2, nc) == pytest.approx(ref, rel=1e-9, abs=1e-12), (f, d1, d2, nc)
    for f, d1, d2, nc in [(1e-12, 317, 3779, 900.0), (1e-30, 29, 35, 88.5)]:
        t = mpmath.mpf(d1) * f / (d1 * f + d2)
        central = lambda j, d1=d1, d2=d2, t=t: mpmath.betainc(d1 / 2 + j, d2 / 2, 0, t, regularized=True)  # noqa: E731
        ref = _mp_mixture(nc / 2, central, mpmath)
        got = log_ncf_cdf(f, d1, d2, nc)
        assert got < -700 and got == pytest.approx(ref, rel=1e-10)
    assert log_ncf_cdf(0.0, 3, 4, 1.0) == -math.inf
    with pytest.raises(ValueError, match=r"^df2 must be a finite number > 0, got 0$"):
        log_ncf_cdf(1.0, 3, 0, 1.0)


def _rates(log_p: torch.Tensor, levels=(0.01, 0.05)) -> list[tuple[float, float, float]]:
    """(level, observed rate of p < level, its binomial sd) for each level."""
    n = log_p.numel()
    return [(lv, float((log_p < math.log(lv)).double().mean()), math.sqrt(lv * (1 - lv) / n)) for lv in levels]


def test_f_law_of_the_ratio_is_exact_on_8x8():
    """Clean N(0, 1) noise, 8x8, radius 3 (29 keyed bins, 35 unkeyed): the ratio of the keyed and unkeyed mean
    squares follows F'(|M|, h w - |M|, ||K||^2 / sigma^2) -- the rates of p < 0.01 and p < 0.05 under that law are
    nominal within 4 binomial sd (so df1, df2 and the noncentrality are right)."""
    key = make_ring_key((1, 8, 8), radius=3, seed=0)
    clean = noise((12000, 1, 8, 8), torch.float64, seed=3)
    spectrum = fourier(clean, 0)
    keyed = (spectrum[:, key.mask] - key.values[key.mask]).abs().square().sum(1)
    unkeyed = spectrum[:, ~key.mask].abs().square().sum(1)
    df1, df2, nc = key.size, 64 - key.size, float(key.values[key.mask].square().sum())  # sigma = 1
    assert (df1, df2) == (29, 35) and nc > 80
    log_p = torch.tensor([log_ncf_cdf(float(a) / df1 / (float(b) / df2), df1, df2, nc)
                          for a, b in zip(keyed, unkeyed, strict=True)])
    for level, rate, sd in _rates(log_p):
        assert abs(rate - level) < 4 * sd, (level, rate)


@pytest.mark.parametrize("seed", [0, 1])
def test_estimated_scale_does_not_inflate_false_positives_on_8x8(seed):
    """With the noise scale estimated from 35 unkeyed bins (8x8, radius 3), plugging it into the chi-square law
    flagged 2.4 % of clean noise at p < 0.01; the F law (noncentrality at the estimated scale) stays at or below
    nominal, for a weak key (nc 2.8, seed 1) and a strong one (nc 88.5, seed 0)."""
    key = make_ring_key((1, 8, 8), radius=3, seed=seed)
    clean = noise((12000, 1, 8, 8), torch.float64, seed=4)
    out = noise_statistic(clean, key)
    assert torch.all(out["df_scale"] == 35) and torch.all(out["df"] == 29)
    for level, rate, sd in _rates(out["log10_p"] * math.log(10)):
        assert rate < level + 4 * sd, (level, rate)


def test_null_p_values_are_uniform():
    """Clean white noise: the lower-tail p-value is uniform with the scale given (ncx2 law, exact) and, for a
    weak key, with it estimated from the unkeyed bins (F law at the estimated noncentrality)."""
    key = make_ring_key((4, 16, 16), radius=3, seed=1)
    clean = noise((1000, 4, 16, 16), torch.float64, seed=2) * 1.7
    for noise_std in (None, 1.7):
        p = noise_statistic(clean, key, noise_std=noise_std)["p_value"]
        for level in (0.01, 0.05, 0.5):
            assert abs(float((p < level).double().mean()) - level) < 3 * math.sqrt(level * (1 - level) / 1000) + 0.005
    score = noise_statistic(clean, key, noise_std=1.7)["score"]  # standardised under the exact null
    assert abs(float(score.mean())) < 0.1 and abs(float(score.std()) - 1) < 0.1


def test_score_uses_the_moments_of_the_law_of_the_p_value():
    """score = (E0[S] - S) / sd0[S]: ncx2 moments given the scale; df1 times the noncentral F moments (scipy)
    when it is estimated."""
    stats = pytest.importorskip("scipy.stats")
    key = make_ring_key((4, 16, 16), radius=3, seed=1)
    sample = noise((3, 4, 16, 16), torch.float64, seed=5)
    est, given = noise_statistic(sample, key), noise_statistic(sample, key, noise_std=1.0)
    assert torch.all(given["df_scale"] == math.inf)
    for out in (est, given):
        for s, nc, d2, score in zip(out["distance"], out["nc"], out["df_scale"], out["score"], strict=True):
            law = stats.ncx2(29, float(nc)) if math.isinf(d2) else stats.ncf(29, float(d2), float(nc))
            scale = 1 if math.isinf(d2) else 29
            mean, var = (float(v) * scale ** k for k, v in ((1, law.mean()), (2, law.var())))
            assert float(score) == pytest.approx((mean - float(s)) / math.sqrt(var), rel=1e-12)


def test_statistic_reports_the_scale_and_the_mean_distance_to_the_key():
    """``sigma``: the rms of the unkeyed DFT bins (or ``noise_std``); ``l1``: the mean ``|Y - K|`` over the mask;
    ``flagged(alpha)``: ``p < alpha``, strictly."""
    key = make_ring_key((4, 8, 8), radius=2, seed=1)
    sample = noise((3, 4, 8, 8), torch.float64, seed=6) * 1.3
    spectrum = fourier(sample, key.channel)
    out = noise_statistic(sample, key)
    expected_l1 = (spectrum[:, key.mask] - key.values[key.mask]).abs().mean(1)
    assert torch.allclose(out["l1"], expected_l1, rtol=1e-12, atol=0)
    assert torch.allclose(out["sigma"], spectrum[:, ~key.mask].abs().square().mean(1).sqrt(), rtol=1e-12, atol=0)
    assert torch.equal(noise_statistic(sample, key, noise_std=2.0)["sigma"], torch.full((3,), 2.0, dtype=torch.float64))
    det = score_noise(sample, key)
    det.p_value = torch.tensor([0.01, 0.0099, 0.5], dtype=torch.float64)
    assert det.flagged(0.01).tolist() == [False, True, False]


def test_roc_summaries():
    assert roc_auc([3, 4, 5], [0, 1, 2]) == 1.0 and roc_auc([0, 1], [2, 3]) == 0.0
    assert roc_auc([1, 2], [1, 2]) == 0.5
    assert tpr_at_fpr([5, 6, 0.5], [0, 1], 0.01) == (2 / 3, 0.0)  # strictly above the highest clean score
    neg = list(range(200))
    assert tpr_at_fpr([198.5, 199.5, 150], neg, 0.01) == (2 / 3, 0.01)
    # 0.29 * 100 is 28.999999999999996 in floating point: 29 false positives are allowed, not 28
    assert tpr_at_fpr([70.5], list(range(100)), 0.29) == (1.0, 0.29)
    assert tpr_at_fpr([70.5], list(range(100)), 0.285) == (0.0, 0.28)
    # the margin is for rounding only: 28.99 allows 28 (FPR 0.28), never a FPR above the one asked
    assert tpr_at_fpr([70.5], list(range(100)), 0.2899) == (0.0, 0.28)
    assert tpr_at_fpr([990.5], list(range(1000)), 0.00999) == (1.0, 0.009)
    # an fpr within the margin of 1 allows n - 1 false positives, not n (an index past the end)
    assert tpr_at_fpr([0.5], list(range(100)), 1 - 1e-13) == (1.0, 0.99)
    # a positive exactly at the threshold is not flagged (strictly above); an fpr of 1 is not a rate to ask for
    assert tpr_at_fpr([1.0, 1.5], [0.0, 1.0], 0.01) == (0.5, 0.0)
    with pytest.raises(ValueError, match=r"fpr must lie in \[0, 1\)"):
        tpr_at_fpr([1.0], [0.0], 1.0)
    with pytest.raises(ValueError, match="negative must be a non-empty set of finite scores"):
        roc_auc([1.0], [float("nan")])
    with pytest.raises(ValueError, match="positive must be a non-empty set of finite scores"):
        tpr_at_fpr([], [1.0, 2.0])


def test_detection_separates_watermarked_from_clean(tmp_path):
    """Generate 4 keyed and 4 clean images (BDIA, exactly invertible stand-in VAE), save them as 8-bit
    PNGs, read them back, and detect by full inversion (encoder and gradient-free decoder inversion)."""
    vae, unet = LinearPatchVae(gain=0.01), tiny_unet()
    grid = Schedule.from_scheduler(sd_scheduler(), 8)
    key = make_ring_key((4, 8, 8), radius=2, seed=3)
    z = noise((8, 4, 8, 8), seed=4)
    marked = generate(vae.pair, unet, grid, z[:4], key=key, gamma=0.96)
    plain = generate(vae.pair, unet, grid, z[4:], gamma=0.96)
    assert marked.images.dtype == torch.uint8 and marked.images.shape == (4, 3, 64, 64)
    files = save_images(torch.cat([marked.images, plain.images]), tmp_path, "x")
    pictures = [Image.open(f) for f in files]
    assert np.array_equal(np.asarray(pictures[0]), marked.images[0].permute(1, 2, 0).numpy())
    for method, options in (("encoder", {}), ("adam", dict(steps=5))):
        wm = detect(vae.pair, unet, grid, key, pictures[:4], gamma=0.96, method=method, **options)
        clean = detect(vae.pair, unet, grid, key, pictures[4:], gamma=0.96, method=method, **options)
        assert roc_auc(wm.score, clean.score) == 1.0, method
        assert torch.all(wm.log10_p < -5) and torch.all(clean.log10_p > -3), method
        assert torch.all(wm.flagged(0.01)) and not torch.any(clean.flagged(0.01))
        assert wm.inversion.method == method and wm.zT.shape == (4, 4, 8, 8)
        assert repr(wm).startswith("Detection(4 images, 4 flagged at p < 0.01") and "\n" not in repr(wm)
    # the same statistics from the recovered noise directly
    again = score_noise(wm.zT, key)
    assert torch.equal(again.score, wm.score)


def test_generate_and_detect_pass_their_options_on():
    """``generate``'s ``cond`` and ``gamma`` reach the sampler; ``detect``'s ``gamma``, ``cond`` and ``method`` reach
    the inversion (same noise as calling it directly) and its ``noise_std`` the statistic."""
    vae, seen = LinearPatchVae(gain=0.01), []

    def eps(z, t, scale):
        seen.append(scale)
        return 0.1 * scale * z

    grid = Schedule.from_scheduler(sd_scheduler(), 4)
    key = make_ring_key((4, 8, 8), radius=2, seed=3)
    z = noise((2, 4, 8, 8), seed=4)
    out = generate(vae.pair, eps, grid, z, key=key, gamma=0.92, cond=dict(scale=2.0))
    assert seen and set(seen) == {2.0}
    assert torch.equal(out.z0, bdia_sample(eps, grid, inject(z, key), gamma=0.92, scale=2.0)[0])
    seen.clear()
    det = detect(vae.pair, eps, grid, key, out.images, gamma=0.92, method="encoder", cond=dict(scale=3.0),
                 noise_std=2.0)
    assert seen and set(seen) == {3.0}
    direct = invert_to_noise(vae.pair, eps, grid, out.images, method="encoder", gamma=0.92, cond=dict(scale=3.0))
    assert torch.equal(det.zT, direct.zT) and det.inversion.gamma == 0.92 and det.inversion.method == "encoder"
    assert torch.all(det.sigma == 2.0)
    assert torch.equal(det.score, noise_statistic(direct.zT, key, noise_std=2.0)["score"])


def test_watermark_bad_inputs():
    with pytest.raises(ValueError, match=r"radius must be an int in \[1, 3\] for 8x8 latents"):
        make_ring_key((4, 8, 8), radius=4)
    with pytest.raises(ValueError, match=r"channel must be an int in \[0, 3\]"):
        make_ring_key((4, 8, 8), channel=4)
    with pytest.raises(ValueError, match="shape must be"):
        make_ring_key((8, 8))
    key = make_ring_key((4, 8, 8), radius=2)
    with pytest.raises(ValueError, match=r"noise must be \(B, 4, 8, 8\) for this key"):
        inject(noise((2, 4, 16, 16)), key)
    with pytest.raises(ValueError, match=r"noise must be \(B, 4, 8, 8\) for this key, got shape \(2, 5, 8, 8\)"):
        inject(noise((2, 5, 8, 8)), key)  # the channel count is part of the key's shape
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        inject(noise().long(), key)
    tiny = make_ring_key((1, 3, 3), radius=1)  # 5 keyed bins, 4 unkeyed: too few to estimate the score's variance
    with pytest.raises(ValueError, match="from the 4 unkeyed Fourier bins of a 3x3 latent; that needs at least 5"):
        noise_statistic(noise((2, 1, 3, 3)), tiny)
    assert torch.all(noise_statistic(noise((2, 1, 3, 3)), tiny, noise_std=1.0)["df_scale"] == math.inf)
    flat = torch.zeros(2, 4, 8, 8)
    flat[:, 3] = 1.0  # a constant channel has only the zero frequency, which is keyed: no scale to estimate
    with pytest.raises(ValueError, match="unkeyed Fourier bins are all zero in some sample"):
        noise_statistic(flat, key)
    with pytest.raises(ValueError, match="noise_std must be a positive number"):
        noise_statistic(noise(), key, noise_std=0.0)
    bad = noise()
    bad[1, 2, 3, 4] = float("nan")
    for check in (lambda z: inject(z, key), lambda z: noise_statistic(z, key)):
        with pytest.raises(ValueError, match="noise: 1 value"):
            check(bad)
    with pytest.raises(ValueError, match="pixels: 1 value"):  # a uint8 cast would make it an arbitrary byte
        to_uint8(bad[:, :3])
    for run in (lambda: detect(None, None, None, "key", None), lambda: inject(noise(), "key"),
                lambda: noise_statistic(noise(), "key"), lambda: score_noise(noise(), key.mask),
                lambda: generate(None, None, None, noise(), key=(4, 8, 8))):
        with pytest.raises(TypeError, match="key must be a TreeRingKey"):  # was an AttributeError but in detect
            run()
    with pytest.raises(ValueError, match="images must be a .* uint8 tensor"):
        save_images(torch.zeros(1, 3, 8, 8), "/tmp/unused")


def test_save_images_checks_the_layout_before_making_the_folder(tmp_path):
    """Channels-last or one-channel uint8 images: a ValueError naming ``images``, and no folder left behind."""
    folder = tmp_path / "out"
    for shape in ((2, 8, 8, 3), (2, 1, 8, 8)):
        with pytest.raises(ValueError, match=rf"images must be a \(B, 3, H, W\) uint8 tensor.*{shape[1]}, {shape[2]}"):
            save_images(torch.zeros(shape, dtype=torch.uint8), folder)
        assert not folder.exists()
    paths = save_images(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), folder, "frame")
    assert [p.name for p in paths] == ["frame_0.png", "frame_1.png"] and all(p.is_file() for p in paths)


@pytest.mark.parametrize("options, name", [
    (dict(seed=1.5), "seed"), (dict(seed="a"), "seed"), (dict(seed=True), "seed"), (dict(seed=2**64), "seed"),
    (dict(channel=1.0), "channel"), (dict(radius=2.0), "radius"), (dict(shape=None), "shape"),
    (dict(shape=(4, 8, 8.0)), "shape"),
])
def test_make_ring_key_names_a_bad_argument(options, name):
    options = {"shape": (4, 8, 8), **options}
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make_ring_key(options.pop("shape"), **options)
