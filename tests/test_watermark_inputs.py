"""Tree-ring watermark: bad inputs are refused up front, with errors that name the argument (never a NaN, a
hang or a p-value of 1 from a bad parameter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusion_models import LinearPatchVae, noise, sd_scheduler, tiny_unet

from decinv_fast.diffusion import Schedule
from decinv_fast.watermark import (
    detect,
    generate,
    inject,
    log_ncf_cdf,
    log_ncx2_cdf,
    make_ring_key,
    noise_statistic,
    score_noise,
    tpr_at_fpr,
)

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("args, message", [
    ((1.0, NAN, 1.0), "df must be a real number, got nan"),  # was 0.0 (p = 1)
    ((1.0, INF, 1.0), "df must be a finite number > 0, got inf"),  # was -inf (p = 0)
    ((1.0, 0, 1.0), "df must be a finite number > 0, got 0"),
    ((1.0, 2.0, NAN), "nc must be a real number, got nan"),  # was "cannot convert float NaN to integer"
    ((1.0, 2.0, INF), r"nc must be a number in \[0, 1e\+07\]"),  # was an OverflowError
    ((1.0, 2.0, 1e300), r"nc must be a number in \[0, 1e\+07\] .*got 1e\+300"),  # was a loop of 5e299 terms
    ((1.0, 2.0, -1.0), "nc must be a number in"),
    ((NAN, 2.0, 1.0), "x must be a real number, got nan"),
    (("1", 2.0, 1.0), "x must be a real number, got '1'"),  # was a TypeError from math
    ((1.0, True, 1.0), "df must be a real number, got True"),
    # a 0-d tensor is taken as its number: out of range, its error gives no tensor hint
    ((1.0, torch.tensor(-1.0), 1.0), r"df must be a finite number > 0, got tensor\(-1.\)$"),
    ((1.0, 2.0, torch.tensor(-1.0)), r"nc must be a number in \[0, 1e\+07\] .*got tensor\(-1.\)$"),
])
def test_log_ncx2_cdf_names_a_bad_parameter(args, message):
    with pytest.raises(ValueError, match=rf"^{message}"):
        log_ncx2_cdf(*args)


@pytest.mark.parametrize("args, message", [
    ((1.0, NAN, 30.0, 1.0), "df1 must be a real number, got nan"),  # was 0.0 (p = 1)
    ((1.0, 2.0, NAN, 1.0), "df2 must be a real number, got nan"),  # was 0.0 (p = 1)
    ((1.0, 2.0, INF, 1.0), "df2 must be a finite number > 0, got inf"),  # was "math domain error"
    ((1.0, 2.0, 3.0, NAN), "nc must be a real number, got nan"),
    ((1.0, 2.0, 3.0, INF), r"nc must be a number in \[0, 1e\+07\]"),
    ((NAN, 2.0, 3.0, 1.0), "f must be a real number, got nan"),
    ((None, 2.0, 3.0, 1.0), "f must be a real number, got None"),
])
def test_log_ncf_cdf_names_a_bad_parameter(args, message):
    with pytest.raises(ValueError, match=rf"^{message}"):
        log_ncf_cdf(*args)


def test_cdfs_at_the_ends_and_of_scalar_tensors():
    """``x = +inf`` is p = 1 (log 0), ``-inf`` p = 0; a huge finite ``f`` no longer divides inf by inf; 0-d
    tensors and arrays are read as the float they hold (in float64, whatever their dtype)."""
    assert log_ncx2_cdf(INF, 3, 1.0) == 0.0 and log_ncf_cdf(INF, 3, 4, 1.0) == 0.0
    assert log_ncx2_cdf(-INF, 3, 1.0) == -math.inf and log_ncf_cdf(-INF, 3, 4, 1.0) == -math.inf
    assert log_ncf_cdf(1e308, 29, 35, 8.0) == 0.0  # 29 * 1e308 overflows: was NaN
    exact = log_ncx2_cdf(5.0, 13, 10.0)
    got = log_ncx2_cdf(torch.tensor(5.0), np.int64(13), torch.tensor(10.0))
    assert isinstance(got, float) and got == exact  # was a float32-rounded tensor
    assert log_ncf_cdf(np.array(1.0), 29, 35, np.float32(8.0)) == log_ncf_cdf(1.0, 29, 35, 8.0)
    with pytest.raises(ValueError, match=r"^x must be a real number, got tensor\(\[1\., 2\.\]\)"):
        log_ncx2_cdf(torch.tensor([1.0, 2.0]), 3, 1.0)


@pytest.mark.parametrize("scale, noise_std, name", [
    (1e-150, None, "noise"), (1e170, None, "noise"), (1.0, 1e-150, "noise_std"), (1.0, 1e-200, "noise_std"),
    (1.0, 1e200, "noise_std"),
])
def test_noise_statistic_refuses_a_noise_scale_it_cannot_test(scale, noise_std, name):
    """A noise scale far from the key's (a noncentrality beyond 1e7, or overflow) is an error naming the argument;
    it was an OverflowError, an endless sum over ~1e300 Poisson terms, or a NaN distance."""
    key = make_ring_key((4, 8, 8), radius=2)
    with pytest.raises(ValueError, match=rf"^{name}: a noise scale sigma of .* is out of range for this key"):
        noise_statistic(noise(dtype=torch.float64) * scale, key, noise_std=noise_std)
    assert torch.all(noise_statistic(noise(dtype=torch.float64) * 0.1, key)["p_value"] <= 1)  # a small scale is fine


def test_empty_batches_are_refused():
    """An empty batch was an MKL FFT error ("Inconsistent configuration parameters")."""
    key = make_ring_key((4, 8, 8), radius=2)
    empty = noise()[:0]
    for run in (lambda: inject(empty, key), lambda: noise_statistic(empty, key), lambda: score_noise(empty, key)):
        with pytest.raises(ValueError, match=r"^noise: empty batch \(shape \(0, 4, 8, 8\)\)"):
            run()


def test_generate_checks_cond_and_noise_up_front():
    """A non-mapping ``cond`` was "argument after ** must be a mapping"; a bad ``noise`` was called ``z_T``."""
    vae, unet = LinearPatchVae(), tiny_unet()
    grid = Schedule.from_scheduler(sd_scheduler(), 3)
    z = noise()
    with pytest.raises(TypeError, match=r"^cond must be a dict of the eps model's keyword arguments .* got list"):
        generate(vae.pair, unet, grid, z, cond=[1])
    bad = z.clone()
    bad[0, 0, 0, 0] = NAN
    key = make_ring_key((4, 8, 8), radius=2)
    for given in (bad, z.long(), z[:0], [1.0]):
        for keyed in (None, key):
            with pytest.raises((TypeError, ValueError), match=r"^noise\b") as err:
                generate(vae.pair, unet, grid, given, key=keyed)
            assert "z_T" not in str(err.value)
    with pytest.raises(ValueError, match=r"^noise must be \(B, 4, h, w\) for this UNet"):
        generate(vae.pair, unet, grid, noise((2, 3, 8, 8)))


def test_detect_checks_the_image_size_against_the_key_before_inverting(fixture_vae, images_32):
    """32x32 images are 4x4x4 latents with the fixture VAE (factor 8): a key made for 8x8 latents is refused
    before any inversion (was: after it, as "noise must be (B, 4, 8, 8)", an argument detect does not have)."""
    calls = []

    def eps(z, t):
        calls.append(t)
        return 0.1 * z

    grid = Schedule.from_scheduler(sd_scheduler(), 3)
    with pytest.raises(ValueError, match=r"^images and key do not match: 32x32-pixel images have 4x4x4 latents .* "
                                         r"key was made for 4x8x8: use make_ring_key\(\(4, 4, 4\)\)"):
        detect(fixture_vae, eps, grid, make_ring_key((4, 8, 8)), images_32, method="encoder")
    assert calls == []  # no diffusion inversion ran
    # an (encode, decode) pair has no known factor: the same check, after the inversion that reveals the shape
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^images and key do not match: images were inverted to 4x4x4 latents"):
        detect(LinearPatchVae().pair, eps, grid, make_ring_key((4, 8, 8)), images, method="encoder")
    det = detect(LinearPatchVae().pair, eps, grid, make_ring_key((4, 4, 4)), images, method="encoder", noise_std=1.0)
    assert det.zT.shape == (2, 4, 4, 4) and torch.all(det.p_value <= 1)


def test_detect_with_ddim_inversion_takes_no_gamma():
    """gamma is BDIA's: detect passes none on for diffusion="ddim" (invert_to_noise refuses a given one)."""
    images, key = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), make_ring_key((4, 4, 4))
    grid = Schedule.from_scheduler(sd_scheduler(), 3)
    det = detect(LinearPatchVae().pair, lambda z, t: 0.1 * z, grid, key, images, method="encoder", diffusion="ddim",
                 noise_std=1.0)
    assert det.inversion.diffusion == "ddim" and det.inversion.gamma is None and det.zT.shape == (2, 4, 4, 4)
    with pytest.raises(ValueError, match="gamma is BDIA's; diffusion='ddim' takes none"):
        detect(LinearPatchVae().pair, lambda z, t: 0.1 * z, grid, key, images, method="encoder", diffusion="ddim",
               gamma=0.9)


@pytest.mark.parametrize("fpr", ["0.1", None, NAN, True])
def test_tpr_at_fpr_names_a_bad_fpr(fpr):
    with pytest.raises(ValueError, match=r"^fpr must lie in \[0, 1\), got"):  # a str or None was a raw TypeError
        tpr_at_fpr([1.0], [0.0], fpr)
    if fpr is None:  # once: a tensor holding a fitting number says what to pass instead
        with pytest.raises(ValueError, match=r"got tensor\(0.1000\) \(a tensor: pass a Python number"):
            tpr_at_fpr([1.0], [0.0], torch.tensor(0.1))


def test_flagged_needs_a_significance_level():
    det = score_noise(noise(dtype=torch.float64), make_ring_key((4, 8, 8), radius=2))
    for alpha in (2, -1, NAN, 0, 1, "0.1", None):  # 2 flagged everything, -1 and NaN nothing
        with pytest.raises(ValueError, match=r"^alpha must lie in \(0, 1\)"):
            det.flagged(alpha)
    assert det.flagged(0.5).dtype == torch.bool and det.flagged().shape == (2,)


@pytest.mark.parametrize("shape", [(4, 2, 2), (4, 2, 8), (1, 8, 1)])
def test_make_ring_key_says_a_latent_is_too_small_for_any_ring(shape):
    """Was "radius must be an int in [1, 0]", an empty range, naming radius though none was given."""
    with pytest.raises(ValueError, match=r"^shape must be \(C, h, w\) with h, w >= 3 for a ring key"):
        make_ring_key(shape)
    assert make_ring_key((4, 3, 3)).radius == 1  # the smallest that has one
