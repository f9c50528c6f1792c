"""Exact reversible BDIA gradients == autograd through the unrolled sampler (fp64, <= 1e-8 relative),
for z_T, text conditioning (with classifier-free guidance) and model parameters; memory flat in N."""

from __future__ import annotations

import pytest
import torch
from diffusion_models import noise, rel, sd_scheduler, text_embeddings, tiny_cond_unet, tiny_unet

from decinv_fast.diffusion import Schedule, bdia_sample, reversible_bdia_sample, unrolled_bdia_sample
from decinv_fast.memory import cpu_allocator_peak

RTOL = 1e-8  # issue 6


pytestmark = pytest.mark.usefixtures("single_thread")


def pair_loss(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1.0, 1.0, z0.numel(), dtype=z0.dtype).view_as(z0)
    return (torch.sin(z0) * weights).sum() + 0.1 * (z1 * z1).sum()


def gradients(sampler, model, grid, z_T, gamma, cond: dict, wrt_cond: tuple, params: list):
    z = z_T.clone().requires_grad_(True)
    live = {k: (v.clone().requires_grad_(True) if k in wrt_cond else v) for k, v in cond.items()}
    z0, z1 = sampler(model, grid, z, gamma=gamma, **live)
    inputs = [z, *(live[k] for k in wrt_cond), *params]
    return (z0.detach(), z1.detach()), torch.autograd.grad(pair_loss(z0, z1), inputs)


@pytest.mark.parametrize("steps", [1, 2, 10])
@pytest.mark.parametrize("gamma", [1.0, 0.96, 0.5])
def test_unet_gradients_equal_unrolled_autograd(steps, gamma):
    unet = tiny_unet(torch.float64)
    params = [p for name, p in unet.named_parameters() if "conv_in" in name or "attentions" in name]
    for p in params:
        p.requires_grad_(True)
    grid = Schedule.from_scheduler(sd_scheduler(), steps)
    z_T = noise(dtype=torch.float64)
    out_a, want = gradients(unrolled_bdia_sample, unet, grid, z_T, gamma, {}, (), params)
    out_r, got = gradients(reversible_bdia_sample, unet, grid, z_T, gamma, {}, (), params)
    assert torch.equal(out_a[0], out_r[0]) and torch.equal(out_a[1], out_r[1])
    assert len(got) == 1 + len(params) > 1
    assert rel(got[0], want[0]) <= RTOL
    # parameters as one vector (some, like the attention key bias, have an exactly-zero gradient)
    flat_got, flat_want = torch.cat([g.flatten() for g in got[1:]]), torch.cat([g.flatten() for g in want[1:]])
    assert rel(flat_got, flat_want) <= RTOL


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_conditioning_gradients_equal_unrolled_autograd(guidance):
    unet = tiny_cond_unet(torch.float64)
    grid = Schedule.from_scheduler(sd_scheduler(), 8)
    z_T = noise(dtype=torch.float64)
    text, empty = text_embeddings(2, torch.float64)
    cond, wrt = dict(encoder_hidden_states=text), ("encoder_hidden_states",)
    if guidance != 1.0:
        cond.update(guidance_scale=guidance, negative_encoder_hidden_states=empty)
        wrt = ("encoder_hidden_states", "negative_encoder_hidden_states")
    _, want = gradients(unrolled_bdia_sample, unet, grid, z_T, 0.96, cond, wrt, [])
    _, got = gradients(reversible_bdia_sample, unet, grid, z_T, 0.96, cond, wrt, [])
    for a, b in zip(got, want, strict=True):
        assert rel(a, b) <= RTOL


def test_unrolled_baseline_is_the_sampler():
    unet = tiny_unet(torch.float64)
    grid = Schedule.from_scheduler(sd_scheduler(), 6)
    z_T = noise(dtype=torch.float64)
    with torch.no_grad():
        want = bdia_sample(unet, grid, z_T, gamma=0.9)
        got = unrolled_bdia_sample(unet, grid, z_T, gamma=0.9)
        rev = reversible_bdia_sample(unet, grid, z_T, gamma=0.9)
    for a, b, c in zip(got, want, rev, strict=True):
        assert torch.equal(a, b) and torch.equal(c, b)


def test_memory_does_not_grow_with_steps():
    """Allocator peak of forward + backward: flat for reversible, growing for unrolled autograd."""
    unet = tiny_unet(torch.float32)
    z_T = noise(dtype=torch.float32)

    def peak(sampler, steps):
        grid = Schedule.from_scheduler(sd_scheduler(), steps)

        def run():
            z = z_T.clone().requires_grad_(True)
            pair_loss(*sampler(unet, grid, z, gamma=0.96)).backward()

        run()  # warm-up outside the measurement
        return cpu_allocator_peak(run)[1]

    rev_short, rev_long = peak(reversible_bdia_sample, 4), peak(reversible_bdia_sample, 16)
    auto_short, auto_long = peak(unrolled_bdia_sample, 4), peak(unrolled_bdia_sample, 16)
    assert None not in (rev_short, rev_long, auto_short, auto_long)
    assert rev_long < 1.25 * rev_short
    assert auto_long > 2.0 * auto_short and rev_long < 0.5 * auto_long


@pytest.mark.parametrize("gamma", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_bad_gamma_is_named(gamma):
    with pytest.raises(ValueError, match="gamma"):
        reversible_bdia_sample(tiny_unet(), Schedule.from_scheduler(sd_scheduler(), 3), noise(), gamma=gamma)


def test_bad_inputs_are_named():
    unet, grid = tiny_unet(), Schedule.from_scheduler(sd_scheduler(), 3)
    with pytest.raises(TypeError, match="z_T"):
        reversible_bdia_sample(unet, grid, noise(dtype=torch.float64), gamma=0.9)
    with pytest.raises(ValueError, match="z_T"):
        reversible_bdia_sample(unet, grid, torch.zeros(2, 3, 8, 8), gamma=0.9)
    with pytest.raises(ValueError, match=r"params\[0\]"):
        reversible_bdia_sample(unet, grid, noise(), gamma=0.9, params=[torch.zeros(3)])
    with pytest.raises(TypeError, match="encoder_hidden_states"):
        reversible_bdia_sample(tiny_cond_unet(), grid, noise(), gamma=0.9,
                               encoder_hidden_states=text_embeddings(2, torch.float64)[0])
