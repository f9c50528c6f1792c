"""Anderson's mixing weights fitted per latent frame (option ``frame_weights``, on in ``auto``): the mixer's
per-frame least squares, the frame layouts of video and frame-by-frame VAEs, and what it reduces to."""

from types import SimpleNamespace

import pytest
import torch

import decinv_fast
from decinv_fast.accelerated import frame_layout
from decinv_fast.anderson import AndersonMixer, FrameLayout
from decinv_fast.options import auto_kwargs

# a causal video VAE's sample: 2 latent channels of 3 frames of 4 elements; 3 pixel channels of 9 frames of 5
CAUSAL = FrameLayout(latent=(2, 3, 4), pixel=(3, 9, 5), pixel_to_latent=(0, 1, 1, 1, 1, 2, 2, 2, 2))


def test_a_video_vae_s_latent_frames_own_the_pixel_frames_they_decode_to():
    vae = SimpleNamespace(encodes_videos=True, temporal_compression=4)
    layout = frame_layout(vae, 2, torch.zeros(2, 4, 3, 2, 2), torch.zeros(2, 3, 9, 16, 16))
    assert layout == FrameLayout((4, 3, 4), (3, 9, 256), (0, 1, 1, 1, 1, 2, 2, 2, 2))
    assert [layout.pixel_frames(t) for t in range(3)] == [slice(0, 1), slice(1, 5), slice(5, 9)]
    images = SimpleNamespace(encodes_videos=False)  # frame by frame: frame-major latents, F frames a sample
    assert frame_layout(images, 2, torch.zeros(6, 4, 2, 2), torch.zeros(6, 3, 16, 16)) == \
        FrameLayout((1, 3, 16), (1, 3, 768), (0, 1, 2))


def test_a_layout_must_map_pixel_frames_in_order_onto_every_latent_frame():
    for owners in [(0, 1, 1), (0, 2, 1, 1, 1, 1, 2, 2, 2), (0, 0, 0, 0, 0, 1, 1, 1, 1)]:
        with pytest.raises(ValueError, match="pixel_to_latent"):
            FrameLayout((2, 3, 4), (3, len(owners), 5), owners)


def _history(batch: int, pixels: bool, seed: int = 0):
    """Four evaluated points of ``batch`` samples (``y``, ``g``, pixel error, residual), random."""
    g = torch.Generator().manual_seed(seed)
    n, p = 2 * 3 * 4, 3 * 9 * 5
    return [(torch.randn(batch, n, generator=g, dtype=torch.float64),
             torch.randn(batch, n, generator=g, dtype=torch.float64), torch.rand(batch, dtype=torch.float64),
             torch.randn(batch, p, generator=g, dtype=torch.float64) if pixels else None) for _ in range(4)]


@pytest.mark.parametrize("pixels", [False, True], ids=["latent", "pixel"])
def test_each_latent_frame_mixes_by_its_own_regularised_least_squares(pixels):
    """The fourth step's point, computed directly: for each latent frame ``t``, ``gamma_t`` minimises
    ``||f_t - dF_t gamma||² + lam_t ||gamma||²`` over the frame's part of the residual (its latents, or the pixel
    frames it decodes to), ``lam_t = reg * trace(dF_t dF_t^T) / m``, and moves only frame ``t``'s latents."""
    points = _history(2, pixels)
    mixer = AndersonMixer(points[0][0], memory=3, pixels=3 * 9 * 5 if pixels else None, safeguard=False,
                          frames=CAUSAL, reg=1e-3)
    for y, g, error, residual in points:
        got = mixer.step(y, g, error, residual)
    y, g = points[-1][0], points[-1][1]
    diffs = lambda k: torch.stack([b[k] - a[k] for a, b in zip(points, points[1:], strict=False)], 1)  # noqa: E731  (B, 3, n)
    fit, target = (diffs(3), points[-1][3]) if pixels else (diffs(1), g)
    both = (diffs(0) + diffs(1)).view(2, 3, 2, 3, 4)
    want = (y + g).view(2, 2, 3, 4).clone()
    for t in range(3):
        part = CAUSAL.pixel_frames(t) if pixels else slice(t, t + 1)
        shape = CAUSAL.pixel if pixels else CAUSAL.latent
        for b in range(2):
            a = fit[b].view(3, *shape)[:, :, part].reshape(3, -1).T  # (elements, m)
            lam = 1e-3 * (a * a).sum() / 3
            gamma = torch.linalg.solve(a.T @ a + lam * torch.eye(3, dtype=a.dtype),
                                       a.T @ target[b].view(shape)[:, part].reshape(-1))
            want[b, :, t] -= torch.einsum("i,ior->or", gamma, both[b, :, :, t])
    torch.testing.assert_close(got, want.view(2, -1), rtol=1e-10, atol=1e-12)
    plain = AndersonMixer(points[0][0], memory=3, pixels=3 * 9 * 5 if pixels else None, safeguard=False, reg=1e-3)
    for y, g, error, residual in points:
        once = plain.step(y, g, error, residual)
    assert (once - got).abs().max() > 1e-3  # one gamma per sample is another point


def test_with_one_frame_a_sample_mixes_as_with_one_set_of_weights_bit_for_bit(tiny_kl, images_32):
    per_frame = decinv_fast.invert(tiny_kl, images_32, method="auto", steps=6, measure_memory=False)
    per_sample = decinv_fast.invert(tiny_kl, images_32, steps=6, measure_memory=False,
                                    **auto_kwargs(frame_weights=False))
    assert torch.equal(per_frame.latents, per_sample.latents)


@pytest.mark.parametrize("mixing", ["latent", "pixel"])
def test_a_video_of_a_frame_by_frame_vae_mixes_each_frame_as_an_image_inverted_alone(tiny_kl, mixing):
    """An image VAE decodes each frame on its own, so with weights per frame (and nothing else per video:
    no best-iterate choice, one gain) a video's frames take the steps they take as separate images."""
    g = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1  # (B, F, 3, H, W)
    kw = dict(auto_kwargs(mixing=mixing, keep_best=False, patience=None, mean_gain_clipped=3.0), steps=5,
              measure_memory=False, dtype=torch.float64)  # fp64: the pixel fit's rounding, summed apart, stays small
    frames = decinv_fast.invert(tiny_kl, video[0], **kw).latents  # three images
    per_frame = decinv_fast.invert(tiny_kl, video, **kw).latents
    torch.testing.assert_close(per_frame[0], frames, rtol=1e-9, atol=1e-11)
    per_video = decinv_fast.invert(tiny_kl, video, **dict(kw, frame_weights=False)).latents
    assert (per_video[0] - frames).abs().max() > 1e-3


def test_frame_weights_must_be_a_bool(tiny_kl, images_32):
    with pytest.raises(ValueError, match="frame_weights must be True or False"):
        decinv_fast.invert(tiny_kl, images_32, method="anderson", frame_weights="yes", steps=1)
    with pytest.raises(TypeError, match="frame_weights"):
        decinv_fast.invert(tiny_kl, images_32, method="fsm", frame_weights=True, steps=1)
