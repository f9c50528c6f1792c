"""The ``mean_gain`` option: the step's per-frame, per-channel spatial mean scaled (accelerated.py)."""

import pytest
import torch
from test_acceleration import dense_pixel_anderson, images, steps_to

import decinv_fast


def slow_mean_codec(mean_eig=0.1):
    """``E(D(z)) = z + (mean_eig - 1) mean(z)`` per sample and channel (D the identity): the latents'
    per-channel offsets contract by ``1 - rho * mean_eig`` a forward step, the rest is solved in one."""
    encode = lambda x: x + (mean_eig - 1) * x.mean((2, 3), keepdim=True)  # noqa: E731
    return encode, (lambda z: z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("method", ["fsm", "km", "anderson"])
def test_mean_gain_one_is_the_plain_iteration(tiny_kl, images_32, method, dtype):
    """A gain of 1 changes nothing, and so does the torch update a gain sends fsm and km through:
    a gain of 1 + 1e-12 (rounded away in fp32) gives the fused kernels' points bit for bit, fp16's
    fp32 master included, so the gain's path differs from the plain one only by its gain."""
    kw = dict(method=method, lr=0.7, steps=5, schedule="paper", dtype=dtype)
    kw.update({"alpha": 0.3} if method == "km" else {})
    plain = decinv_fast.invert(tiny_kl, images_32, **kw)
    for gain in (1.0, 1.0 + 1e-12):
        assert torch.equal(decinv_fast.invert(tiny_kl, images_32, mean_gain=gain, **kw).latents, plain.latents)


@pytest.mark.parametrize("memory", [0, 3])
def test_mean_gain_matches_a_dense_implementation(tiny_kl, images_32, memory):
    """The engine's preconditioned step (m = 0: the forward step) gives the dense float64 points."""
    from decinv_fast.adapters import as_adapter

    adapter = as_adapter(tiny_kl)
    encode, decode = adapter.encode, (lambda z: adapter.decode(z, 1))
    expected = dense_pixel_anderson((encode, decode), images_32, steps=5, rho=0.8, m=memory, mean_gain=2.5)
    seen = [encode(images_32)]
    decinv_fast.invert(tiny_kl, images_32, method="anderson", mixing="pixel", safeguard=False, memory=memory,
                       lr=0.8, mean_gain=2.5, steps=4, schedule="constant", chunk_frames=1,
                       callback=lambda k, z: seen.append(z.clone()))
    for k, (got, want) in enumerate(zip(seen, expected, strict=True)):
        torch.testing.assert_close(got.flatten(1).double(), want, rtol=2e-3, atol=2e-4, msg=f"point {k}")


def test_mean_gain_solves_a_slow_mean_mode():
    """The offsets contract by 0.9 a plain step (~130 steps to 1e-6); a gain of 1/0.1 solves them in one."""
    codec, x = slow_mean_codec(0.1), images()
    x = x + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)  # offsets to recover
    kw = dict(method="fsm", lr=1.0, steps=200, schedule="constant", tol=1e-6)
    plain = decinv_fast.invert(codec, x, **kw)
    gained = decinv_fast.invert(codec, x, mean_gain=10.0, **kw)
    n_plain, n_gained = steps_to(plain.residual_history, 1e-6), steps_to(gained.residual_history, 1e-6)
    assert n_gained is not None and n_gained <= 2
    assert n_plain is not None and n_plain >= 100
    torch.testing.assert_close(gained.latents, x, atol=1e-5, rtol=0)
    # the reported residual is ||T||, not the preconditioned step's norm
    assert float(gained.residual_history[0].max()) == pytest.approx(float(plain.residual_history[0].max()))


def test_mean_gain_acts_on_each_frame(tiny_kl):
    """A video's frames are preconditioned one by one: the forward step on a 3-frame video equals it on
    the frames as a batch of images."""
    video = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    kw = dict(method="fsm", lr=0.8, mean_gain=3.0, steps=4, schedule="constant")
    as_video = decinv_fast.invert(tiny_kl, video, **kw).latents
    as_images = decinv_fast.invert(tiny_kl, video[0], **kw).latents
    torch.testing.assert_close(as_video[0], as_images, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="fsm", mean_gain=0.0), "mean_gain"), (dict(method="anderson", mean_gain=-1.0), "mean_gain"),
    (dict(method="km", mean_gain=float("nan")), "mean_gain"), (dict(method="fsm", mean_gain=True), "mean_gain"),
    (dict(method="adam", mean_gain=2.0), "mean_gain"), (dict(method="grad", mean_gain=2.0), "mean_gain"),
    (dict(method="fsm", mean_gain=2.0, cuda_graphs=True), "cuda_graphs"),
    (dict(method="fsm", mean_gain_clipped=0.0), "mean_gain_clipped"),
    (dict(method="anderson", mean_gain_clipped="1"), "mean_gain_clipped"),
    (dict(method="adam", mean_gain_clipped=2.0), "mean_gain_clipped"),
    (dict(method="km", mean_gain_clipped=2.0, cuda_graphs=True), "cuda_graphs"),
])
def test_bad_mean_gain(tiny_kl, images_32, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decinv_fast.invert(tiny_kl, images_32, steps=2, **kwargs)


def test_mean_gain_needs_spatial_latents():
    flat = (lambda x: x.flatten(1) * 2.0, lambda z: z.view(-1, 3, 8, 8) / 2.0)
    with pytest.raises(ValueError, match="mean_gain"):
        decinv_fast.invert(flat, images(), method="fsm", mean_gain=2.0, steps=2)


def test_a_gain_below_one_shrinks_the_mean_of_the_step():
    """A gain other than 1, below it too, goes through the torch update that applies it: one forward
    step from ``z_0 = x`` on ``E(D(z)) = z / 2`` moves by ``s = rho x / 2`` with its channel means halved."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    out = decinv_fast.invert((lambda p: p.clone(), lambda z: z / 2), x, method="fsm", lr=0.8, mean_gain=0.5,
                             steps=1, schedule="constant")
    s = 0.8 * x / 2
    assert out.backend == "torch"
    torch.testing.assert_close(out.latents - x, s - 0.5 * s.mean((2, 3), keepdim=True), rtol=0, atol=1e-6)


def halving_codec():
    """``E`` the identity, ``D(z) = z / 2``: one forward step from ``z_0 = x`` is ``s = rho x / 2``, its
    channel means scaled by the gain."""
    return lambda p: p.clone(), lambda z: z / 2


def gained(s: torch.Tensor, gain: float) -> torch.Tensor:
    return s + (gain - 1) * s.mean((-2, -1), keepdim=True)


def test_mean_gain_clipped_is_the_gain_of_images_with_a_thousandth_of_their_values_at_the_ends():
    """3 of 3072 values at +-1 (0.098 %) keep ``mean_gain``; 4 (0.13 %) take ``mean_gain_clipped``, per sample."""
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    x[0, 0, 0, :4] = 1.0
    x[1, 2, 5, :3] = -1.0
    x[2, 1, 7, :2], x[2, 0, 9, :2] = 1.0, -1.0  # both ends count
    out = decinv_fast.invert(halving_codec(), x, method="fsm", lr=0.8, mean_gain=0.5, mean_gain_clipped=2.0,
                             steps=1, schedule="constant")
    s = 0.8 * x / 2
    for sample, gain in enumerate((2.0, 0.5, 2.0)):
        torch.testing.assert_close(out.latents[sample] - x[sample], gained(s[sample], gain), rtol=0, atol=1e-6)


def test_mean_gain_clipped_holds_for_every_frame_of_a_clipped_video():
    """The share is the whole video's: a frame without a clipped value takes the video's gain."""
    video = torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    video[0, 1, :, :4, :4] = 1.0  # sample 0: 48 of 3072 values, all in its second frame
    out = decinv_fast.invert(halving_codec(), video, method="fsm", lr=0.8, mean_gain=3.0, mean_gain_clipped=1.0,
                             steps=1, schedule="constant")
    s = 0.8 * video / 2
    expected = torch.stack([s[0], gained(s[1], 3.0)])  # gain 1 leaves sample 0's step as it is
    torch.testing.assert_close(out.latents - video, expected, rtol=0, atol=1e-6)


def test_auto_takes_no_gain_on_a_clipped_image_and_its_gain_on_the_others(tiny_kl, images_32):
    """``auto`` on a clipped image is its update with gain 1, on an unclipped one its update with gain 3, bit
    for bit (each image alone; a batch of both equals them up to batched rounding)."""
    from decinv_fast.options import auto_kwargs

    clipped = images_32.clone()
    clipped[0, :, :8] = clipped[0, :, :8].sign()  # a quarter of the image at +-1
    kw = dict(steps=4, measure_memory=False)
    both = decinv_fast.invert(tiny_kl, torch.stack([clipped[0], images_32[1]]), method="auto", **kw).latents
    alone = [decinv_fast.invert(tiny_kl, image[None], method="auto", **kw).latents for image in (clipped[0],
                                                                                                  images_32[1])]
    no_gain = decinv_fast.invert(tiny_kl, clipped[:1], **kw, **auto_kwargs(mean_gain=1.0)).latents
    gain_3 = decinv_fast.invert(tiny_kl, images_32[1:], **kw, **auto_kwargs(mean_gain_clipped=None)).latents
    assert torch.equal(alone[0], no_gain) and torch.equal(alone[1], gain_3)
    everywhere = decinv_fast.invert(tiny_kl, clipped[:1], **kw, **auto_kwargs(mean_gain_clipped=None)).latents
    assert not torch.equal(alone[0], everywhere)  # the rule changed the clipped image's run
    torch.testing.assert_close(both, torch.cat(alone), rtol=3e-4, atol=3e-4)
