"""The VAE runs in eval mode for a call of ``invert``, ``encode`` or ``decode`` and gets its own modes back
(decinv_fast/eval_mode.py): a VAE built directly is in train mode, where dropout made every call random."""

import pytest
import torch
from diffusers import AutoencoderKLWan
from video_vae_models import WAN_STATS, video_of

import decinv_fast


def wan_with_dropout() -> AutoencoderKLWan:
    """A tiny Wan VAE whose residual blocks drop half their activations in train mode (its mode as built)."""
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], dropout=0.5, **WAN_STATS)


def modes(vae) -> list[bool]:
    return [m.training for m in vae.modules()]


@pytest.mark.parametrize("method", ["auto", "adam"])
def test_a_vae_in_train_mode_inverts_as_in_eval_mode_and_keeps_its_modes(method):
    vae = wan_with_dropout()
    vae.decoder.eval()  # a submodule the user put in eval mode alone stays so
    before = modes(vae)
    assert vae.training and not vae.decoder.training
    video = video_of(5)
    runs = [decinv_fast.invert(vae, video, method=method, steps=3, measure_memory=False).latents for _ in range(2)]
    assert modes(vae) == before
    alone = decinv_fast.invert(vae, video[1:], method=method, steps=3, measure_memory=False).latents
    evaluated = decinv_fast.invert(vae.eval(), video, method=method, steps=3, measure_memory=False).latents
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], evaluated)
    torch.testing.assert_close(alone, evaluated[1:], rtol=0, atol=1e-5)


def test_encode_and_decode_run_a_vae_in_train_mode_as_in_eval_mode():
    vae = wan_with_dropout()
    video = video_of(5)
    z = [decinv_fast.encode(vae, video) for _ in range(2)]
    x = [decinv_fast.decode(vae, z[0]) for _ in range(2)]
    assert vae.training and all(modes(vae))
    vae.eval()
    assert torch.equal(z[0], z[1]) and torch.equal(z[0], decinv_fast.encode(vae, video))
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], decinv_fast.decode(vae, z[0]))


def test_the_modes_come_back_when_the_call_raises():
    vae = wan_with_dropout()

    def stop(k, latents):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        decinv_fast.invert(vae, video_of(5), method="auto", steps=3, measure_memory=False, callback=stop)
    assert all(modes(vae))
