"""What the loop feeds the tracker and records: the evaluated point keep_best hands back, a video's
pixel error (a sample is all its frames), the residual grad's tol is read against."""

import pytest
import torch
from test_acceleration import images, linear_codec

import decinv_fast


def relative_pixel_error(latents, x):
    """``||D(z) - x|| / ||x||`` per sample for the identity decoder of ``linear_codec``."""
    return (latents - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)


@pytest.mark.parametrize("lr", [0.5, "auto"], ids=["fused", "torch"])
def test_keep_best_with_km_returns_the_evaluated_point(lr):
    """KM evaluates ``y_k = z_k + alpha (z_k - z_{k-1})``, not ``z_k``: keep_best must return that
    evaluated point, whose decoding has the pixel error recorded for the returned step."""
    codec, x = linear_codec(), images()
    out = decinv_fast.invert(codec, x, method="km", lr=lr, alpha=0.5, steps=12, schedule="constant",
                             keep_best=True)
    best = out.pixel_residual_history.argmin(0)
    assert torch.equal(out.returned_step, best) and (best > 0).all()  # z_k and y_k differ after step 0
    recorded = out.pixel_residual_history[best, torch.arange(x.shape[0])]
    torch.testing.assert_close(relative_pixel_error(out.latents, x), recorded, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["fsm", "grad"])
def test_a_video_s_pixel_error_sums_its_frames(method):
    """A sample of a video is all its frames: its pixel error is that of the whole video."""
    encode, decode = linear_codec(seed=2, n=3 * 8 * 8)
    codec = (encode, lambda z: decode(z) + 0.1)  # so E(x) decodes with an error
    x = images(n=6, seed=3).view(2, 3, 3, 8, 8)  # two videos of three frames
    out = decinv_fast.invert(codec, x, method=method, lr=0.5, steps=1, schedule="constant")
    z0 = decinv_fast.encode(codec, x)
    torch.testing.assert_close(out.pixel_residual_history[0], relative_pixel_error(decode(z0) + 0.1, x),
                               rtol=1e-5, atol=0)


def test_grad_stops_at_tol_on_its_relative_pixel_residual():
    """The gradient-based method's residual is its relative pixel error: tol stops each sample after the
    first step whose recorded residual is below it, the step an untracked run crosses it."""
    codec, x = linear_codec(), images()
    run = dict(method="grad", lr=0.05, steps=12, schedule="constant")
    plain = decinv_fast.invert(codec, x, **run).residual_history
    tol = float(plain[4:6].mean())  # the two samples cross it at different steps
    crossed = ((plain < tol).int().argmax(0) + 1).tolist()
    out = decinv_fast.invert(codec, x, tol=tol, **run)
    assert out.stop_reason == ["tol", "tol"] and out.stopped_at.tolist() == crossed
