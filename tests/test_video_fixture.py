"""The trained fixture video VAE (benchmarks/assets/fixture_video_vae, a tiny AutoencoderKLWan): through a VAE
that compresses time, gradient-free inversion improves on the encoder, as on the image fixture."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

import decinv_fast
from decinv_fast.protocol import make_target
from decinv_fast.testbed_video import heldout_clips

pytestmark = pytest.mark.usefixtures("single_thread")
FOLDER = Path(__file__).resolve().parents[1] / "benchmarks" / "assets" / "fixture_video_vae"


@pytest.fixture(scope="module")
def wan():
    return AutoencoderKLWan.from_pretrained(FOLDER, local_files_only=True,
                                            low_cpu_mem_usage=False).eval().requires_grad_(False)


def test_inversion_beats_the_encoder_and_the_paper_s_adam_on_held_out_clips(wan):
    """Four held-out clips (9 frames, 64x64: one of each motion), the paper's protocol: ``z*`` drawn from the
    posterior, ``x`` its 8-bit decoding. Measured: encoder-only -13.7 dB (mean), Adam (the paper's, 10 steps)
    -14.8, fsm -22.2, auto -22.3; each clip gains over the encoder."""
    clips = heldout_clips(64, 9)[::3]
    target = make_target(wan, clips, seed=0)
    assert target.latents.shape == (4, 4, 3, 8, 8)

    def db(latents):
        return decinv_fast.nmse_db(latents, target.latents, per_sample=True)

    encoder = db(decinv_fast.encode(wan, target.images))
    auto = db(decinv_fast.invert(wan, target.images, method="auto", steps=10, measure_memory=False).latents)
    adam = db(decinv_fast.invert(wan, target.images, method="adam", steps=10, measure_memory=False).latents)
    assert bool((auto < encoder - 2.5).all()), (auto, encoder)
    assert float(auto.mean()) < float(encoder.mean()) - 7 and float(auto.mean()) < float(adam.mean()) - 6


def test_its_latent_space_is_its_config_s(wan):
    """Wan pipelines' space: ``(mode - latents_mean) / latents_std``, per channel, with the shipped statistics."""
    clips = heldout_clips(32, 5)[:2]
    mode = wan.encode(clips.transpose(1, 2).contiguous()).latent_dist.mode()
    mean = torch.tensor(wan.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(wan.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(decinv_fast.encode(wan, clips), (mode - mean) / std)
