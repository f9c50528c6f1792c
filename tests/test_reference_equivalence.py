"""``invert`` reproduces ``reference.py`` bit for bit on the CPU, for every method."""

import copy

import pytest
import torch

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter

STEPS = 12


def codec(vae, frames_per_video=1):
    a = as_adapter(vae)
    return a.encode, (lambda z: a.decode(z, frames_per_video))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("method,options", [
    ("adam", {}), ("adam", {"schedule": "constant"}), ("fsm", {"lr": 0.5}), ("km", {"lr": 0.7, "alpha": 0.3}),
])
def test_gradient_free_bit_exact(tiny_kl, images_32, method, options, dtype):
    vae = tiny_kl if dtype == torch.float32 else tiny_kl.to(dtype)
    try:
        x = images_32.to(dtype)
        enc, dec = codec(vae)
        opts = dict(options)
        schedule = opts.pop("schedule", "paper")
        lr = opts.pop("lr", 0.01)
        kw = dict(steps=STEPS, schedule=schedule, record_iterates=True)
        if method == "adam":
            ref = reference.adam(enc, dec, x, lr=lr, **kw)
        elif method == "fsm":
            ref = reference.fsm(enc, dec, x, rho=lr, **kw)
        else:
            ref = reference.km(enc, dec, x, rho=lr, alpha=opts["alpha"], **kw)
        # fp32_master=False: the official fp16 code (z, m, v and their math in fp16)
        out = decinv_fast.invert(vae, x, method=method, steps=STEPS, lr=lr, schedule=schedule, fp32_master=False,
                                 **opts)
        assert out.latents.dtype == dtype
        assert torch.equal(out.latents, ref.latents)
        ref_res = torch.stack(ref.residuals)
        torch.testing.assert_close(out.residual_history, ref_res, rtol=1e-5, atol=0)
    finally:
        tiny_kl.float()


def test_every_iterate_matches(tiny_kl, images_32):
    enc, dec = codec(tiny_kl)
    ref = reference.adam(enc, dec, images_32, steps=STEPS, record_iterates=True)
    for n in (1, 2, 5, STEPS):
        out = decinv_fast.invert(tiny_kl, images_32, steps=n)
        # a shorter run uses its own schedule, so compare against a reference of the same length
        ref_n = reference.adam(enc, dec, images_32, steps=n)
        assert torch.equal(out.latents, ref_n.latents)
    assert len(ref.iterates) == STEPS


def test_reference_backend_equals_torch_backend(tiny_kl, images_32):
    a = decinv_fast.invert(tiny_kl, images_32, steps=6, backend="torch")
    b = decinv_fast.invert(tiny_kl, images_32, steps=6, backend="reference")
    assert torch.equal(a.latents, b.latents)
    for method in ("fsm", "km"):
        a = decinv_fast.invert(tiny_kl, images_32, method=method, steps=6, lr=0.5, backend="torch")
        b = decinv_fast.invert(tiny_kl, images_32, method=method, steps=6, lr=0.5, backend="reference")
        assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_gradient_based_bit_exact(tiny_kl, images_32, schedule):
    enc, dec = codec(tiny_kl)
    ref = reference.gradient_based(enc, dec, images_32, steps=6, lr=0.01, schedule=schedule)
    out = decinv_fast.invert(tiny_kl, images_32, method="grad", steps=6, lr=0.01, schedule=schedule)
    assert torch.equal(out.latents, ref.latents)
    assert out.residuals[-1] < out.residuals[0]


def test_gradient_based_leaves_a_trainable_vae_untouched(tiny_kl, images_32):
    """A VAE fresh from ``from_pretrained`` has weights that require grad: the baseline still
    differentiates ``z`` alone, gives the frozen VAE's answer, and leaves no ``.grad`` behind."""
    trainable = copy.deepcopy(tiny_kl).requires_grad_(True)
    for clip_aware in (False, True):
        out = decinv_fast.invert(trainable, images_32, method="grad", steps=3, clip_aware=clip_aware)
        expected = decinv_fast.invert(tiny_kl, images_32, method="grad", steps=3, clip_aware=clip_aware)
        assert torch.equal(out.latents, expected.latents)
    enc, dec = codec(trainable)
    reference.gradient_based(enc, dec, images_32, steps=2)
    assert all(p.requires_grad and p.grad is None for p in trainable.parameters())


def test_video_bit_exact(tiny_kl):
    g = torch.Generator().manual_seed(3)
    video = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    enc, dec = codec(tiny_kl)
    ref = reference.adam(enc, dec, video.flatten(0, 1), steps=5)
    out = decinv_fast.invert(tiny_kl, video, steps=5)
    assert out.latents.shape == (2, 3, 4, 2, 2)
    assert torch.equal(out.latents.flatten(0, 1), ref.latents)
    assert out.per_sample_residual.shape == (2,)


def test_adam_eps_is_the_official_code_s():
    """1e-8 in fp32 (and fp64), 1e-4 in half precision; and the engine's fp32 Adam uses it: with a
    constant residual ``c = 1e-7`` the first step moves ``lr * c / (c + eps)``, 0.91 lr (0.09 lr with 1e-6)."""
    assert reference.adam_eps(torch.float32) == reference.adam_eps(torch.float64) == 1e-8
    assert reference.adam_eps(torch.float16) == reference.adam_eps(torch.bfloat16) == 1e-4
    c, lr = 1e-7, 0.01
    x = torch.zeros(1, 1, 4, 4)
    out = decinv_fast.invert((lambda p: p.clone(), lambda z: z + c), x, method="adam", lr=lr, steps=1,
                             schedule="constant")
    torch.testing.assert_close(out.latents, torch.full_like(x, -lr * c / (c + 1e-8)), rtol=1e-5, atol=0)
