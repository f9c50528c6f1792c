"""``protocol.make_target``, the paper's evaluation protocol: ``z*`` a seeded draw from the encoder's
latent distribution (in the pipeline's latent space), ``x = D(z*)`` rounded to 8 bits; videos keep
their shape. The fixture tests only check that inverting such targets gains dB, which a mode instead
of a draw, or a variance for a standard deviation, passes as well."""

import torch

import decinv_fast
from decinv_fast.protocol import make_target
from decinv_fast.visual import quantize


def test_z_star_is_a_seeded_draw_from_the_latent_distribution(tiny_kl, images_32):
    target = make_target(tiny_kl, images_32, seed=3)
    dist = tiny_kl.encode(images_32).latent_dist
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(3))
    expected = (dist.mean + dist.std * noise - 0.1) * 0.5  # tiny_kl: shift_factor 0.1, scaling_factor 0.5
    torch.testing.assert_close(target.latents, expected)
    assert not torch.allclose(make_target(tiny_kl, images_32, seed=4).latents, target.latents)
    assert torch.equal(target.images, quantize(decinv_fast.decode(tiny_kl, target.latents)))
    levels = (target.images.double() + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)


def test_a_video_target_is_its_frames_target_in_video_shape(tiny_kl, images_32):
    video = torch.stack([images_32, images_32.flip(-1)])  # (2 videos, 2 frames, 3, 32, 32)
    target = make_target(tiny_kl, video, seed=0)
    frames = make_target(tiny_kl, video.flatten(0, 1), seed=0)
    assert target.latents.shape == (2, 2, 4, 4, 4) and target.images.shape == video.shape
    assert torch.equal(target.latents.flatten(0, 1), frames.latents)
    assert torch.equal(target.images.flatten(0, 1), frames.images)


def test_target_images_are_contiguous_from_a_channels_last_decoder(images_32):
    """A channels-last decoder hands back channels-last pixels, which convolve to other bits when inverted."""
    from conftest import tiny_kl_config
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_kl_config()).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    target = make_target(vae, images_32, seed=0)
    assert target.images.is_contiguous()
