"""Option ``clip_aware``: pixels the image holds at +-1 are taken as clipped by the pipeline that saved it."""

import pytest
import torch
from spy import spying_codec

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter
from decinv_fast.clipping import clipped_decoding
from decinv_fast.options import auto_kwargs
from decinv_fast.protocol import make_target
from decinv_fast.testbed import heldout_crops
from decinv_fast.visual import quantize


def plain_clipped(decoded: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The rule written out for images whose clipped pixels are exactly +-1."""
    out = decoded.clone()
    top, bottom = images == 1, images == -1
    out[top] = decoded[top].clamp(max=1)
    out[bottom] = decoded[bottom].clamp(min=-1)
    return out


@pytest.fixture
def clipped_32():
    """Random 8-bit images with about a third of their pixels clipped to +-1."""
    g = torch.Generator().manual_seed(4)
    return quantize(((torch.rand(2, 3, 32, 32, generator=g) * 2 - 1) * 1.5).clamp(-1, 1))


def test_clipped_decoding_by_hand():
    x = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.5, 1.3, 0.9995, -1.2])
    d = torch.tensor([1.2, 0.8, -1.3, -0.7, 0.9, 1.5, 1.1, -1.5])
    # at +1: at most the image; at -1: at least the image; inside the range and beyond it (an unclipped
    # float image): as decoded
    expected = torch.tensor([1.0, 0.8, -1.0, -0.7, 0.9, 1.5, 0.9995, -1.5])
    kept = d.clone()
    assert torch.equal(clipped_decoding(d, x), expected) and torch.equal(d, kept)
    channels_last = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    out = clipped_decoding(channels_last, torch.ones(2, 3, 4, 5))
    assert out.stride() == channels_last.stride()  # the encoder sees the decoder's layout


@pytest.mark.parametrize("method,lr", [("adam", 0.01), ("fsm", 0.5), ("km", 0.7), ("grad", 0.05)])
def test_equals_the_reference_with_a_clipping_decoder(tiny_kl, clipped_32, method, lr):
    """With grad, the reference back-propagates through the clipping decoder: the one-sided loss."""
    adapter = as_adapter(tiny_kl)
    x = clipped_32
    decode = lambda z: plain_clipped(adapter.decode(z, 1), x)  # noqa: E731
    run = reference.REFERENCE_METHODS[method]
    kw = dict(lr=lr) if method in ("adam", "grad") else dict(rho=lr)
    ref = run(adapter.encode, decode, x, steps=6, schedule="constant", **kw)
    out = decinv_fast.invert(tiny_kl, x, method=method, steps=6, lr=lr, schedule="constant", clip_aware=True)
    assert torch.equal(out.latents, ref.latents)
    plain = decinv_fast.invert(tiny_kl, x, method=method, steps=6, lr=lr, schedule="constant")
    assert not torch.equal(plain.latents, out.latents)


def test_the_pixel_error_and_the_encoder_see_the_clipped_decoding(tiny_kl, clipped_32):
    encode, decode, seen = spying_codec(tiny_kl)
    x = clipped_32
    out = decinv_fast.invert((encode, decode), x, method="anderson", steps=2, clip_aware=True, keep_best=True)
    shown = plain_clipped(decode(decinv_fast.encode(tiny_kl, x)), x)
    torch.testing.assert_close(seen[1], shown, rtol=0, atol=1e-6)
    relative = (shown - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    torch.testing.assert_close(out.pixel_residual_history[0], relative, rtol=1e-5, atol=0)


def test_changes_nothing_without_clipped_pixels(tiny_kl, images_32):
    x = images_32 * 0.9  # no pixel at +-1
    auto = decinv_fast.invert(tiny_kl, x, method="auto", steps=4)
    unaware = decinv_fast.invert(tiny_kl, x, steps=4, **auto_kwargs(clip_aware=False))
    assert torch.equal(auto.latents, unaware.latents)


def test_survives_graph_warmup_and_replay(tiny_kl, clipped_32):
    kw = dict(method="fsm", lr=1.5, steps=4, schedule="constant", keep_best=True, clip_aware=True)
    eager = decinv_fast.invert(tiny_kl, clipped_32, **kw)
    with pytest.warns(RuntimeWarning, match="no CUDA graphs"):  # the CPU stand-in of the capture path
        graphed = decinv_fast.invert(tiny_kl, clipped_32, cuda_graphs=True, **kw)
    assert torch.equal(graphed.latents, eager.latents)


def test_recovers_saturated_images_on_the_fixture(fixture_vae):
    """Contrast-boosted held-out crops whose decodings overshoot [-1, 1] (about 14% of the saved
    pixels are clipped): ``auto``, which is clip-aware, lands far closer to z* than the same run
    without the option, and no image gets worse."""
    crops = (heldout_crops(size=64, count=4) * 1.6).clamp(-1, 1)
    target = make_target(fixture_vae, crops, seed=0)
    assert float((target.images.abs() == 1).float().mean()) > 0.05
    aware = decinv_fast.invert(fixture_vae, target.images, method="auto", steps=10, measure_memory=False)
    unaware = decinv_fast.invert(fixture_vae, target.images, steps=10, measure_memory=False,
                                 **auto_kwargs(clip_aware=False))
    gain = (decinv_fast.nmse_db(unaware.latents, target.latents, per_sample=True)
            - decinv_fast.nmse_db(aware.latents, target.latents, per_sample=True))
    assert float(gain.mean()) > 2.0 and float(gain.min()) > -0.1, gain


@pytest.mark.parametrize("aware,unaware", [
    (dict(method="fsm", clip_aware=True), dict(method="fsm")),
    (dict(method="auto"), auto_kwargs(clip_aware=False)),
    (dict(method="grad", clip_aware=True), dict(method="grad")),
], ids=["fsm", "auto", "grad"])
def test_each_chunk_of_frames_is_clipped_by_its_own_frames(tiny_kl, clipped_32, aware, unaware):
    """A video whose frames clip different pixels, inverted one frame at a time and whole: the same
    points, so each chunk's decoding is clipped where its own frames are."""
    video = torch.cat([clipped_32, clipped_32.flip(-1)])[None]  # (1, 4, 3, 32, 32)
    whole = decinv_fast.invert(tiny_kl, video, steps=4, **aware)
    for chunk in (1, 3):
        part = decinv_fast.invert(tiny_kl, video, steps=4, chunk_frames=chunk, **aware)
        torch.testing.assert_close(part.latents, whole.latents, rtol=1e-4, atol=1e-5)
    plain = decinv_fast.invert(tiny_kl, video, steps=4, **unaware)
    assert (plain.latents - whole.latents).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_only_the_ends_of_the_8bit_range_count_as_clipped_in_half_precision(dtype):
    levels = quantize(torch.linspace(-1, 1, 256)).to(dtype)  # every 8-bit level, rounded to dtype
    assert levels.unique().numel() == 256
    above, below = torch.full_like(levels, 2.0), torch.full_like(levels, -2.0)
    clipped = (clipped_decoding(above, levels) != above) | (clipped_decoding(below, levels) != below)
    assert clipped.nonzero().flatten().tolist() == [0, 255]


def test_fp16_run_follows_the_fp32_clip_aware_run(fixture_vae):
    """On contrast-boosted fixture crops (decodings overshoot the clipped pixels) auto in fp16 lands
    on the fp32 clip-aware points, far closer than on the unaware ones."""
    target = make_target(fixture_vae, (heldout_crops(size=64, count=2) * 1.6).clamp(-1, 1), seed=0)
    x, kw = target.images, dict(steps=4, measure_memory=False)
    half = decinv_fast.invert(fixture_vae, x.half(), method="auto", dtype=torch.float16, **kw).latents.float()
    aware = decinv_fast.invert(fixture_vae, x, method="auto", **kw).latents
    unaware = decinv_fast.invert(fixture_vae, x, **kw, **auto_kwargs(clip_aware=False)).latents
    to_aware = decinv_fast.nmse_db(half, aware)
    assert to_aware < -45 and to_aware < decinv_fast.nmse_db(half, unaware) - 5  # -51 vs -43 dB (these clipped
    # images take auto's mean_gain_clipped 1 in both runs; at gain 3 both the gap and the margin were larger)


def test_the_bottom_of_the_range_clips_at_the_image_s_own_value():
    """An image pixel within the tolerance of -1 (as of +1) is the bound itself, not -1."""
    x = torch.tensor([-0.9995, -0.9995, 0.9995])
    d = torch.tensor([-1.2, -0.9, 1.2])
    assert torch.equal(clipped_decoding(d, x), torch.tensor([-0.9995, -0.9, 0.9995]))


def test_grad_records_the_pixel_error_of_the_clipped_decoding(tiny_kl, clipped_32):
    """With grad the overshooting pixels pass no gradient, and count as matched in the recorded error."""
    x = clipped_32
    out = decinv_fast.invert(tiny_kl, x, method="grad", steps=1, clip_aware=True)
    decoded = as_adapter(tiny_kl).decode(decinv_fast.encode(tiny_kl, x), 1)
    errors = [(d - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1) for d in (plain_clipped(decoded, x), decoded)]
    assert (errors[0] < errors[1]).all()  # the decoding overshoots some clipped pixels
    torch.testing.assert_close(out.pixel_residual_history[0], errors[0], rtol=1e-5, atol=0)
