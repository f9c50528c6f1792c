"""DDIM / BDIA-DDIM: gamma = 0 is DDIM, exact inversion from the last pair, reported DDIM-inversion error."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusion_models import noise, rel, sd_scheduler, text_embeddings, tiny_cond_unet, tiny_unet

from decinv_fast.diffusion import (
    Denoiser,
    Schedule,
    bdia_inverse_step,
    bdia_invert,
    bdia_invert_from_z0,
    bdia_sample,
    bdia_step,
    ddim_invert,
    ddim_sample,
    ddim_step,
)

# Relative tolerance of z_T rebuilt from the BDIA pair (issue 5).
PAIR_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def collect():
    states = {}
    return states, (lambda i, z: states.__setitem__(i, z.clone()))


def test_step_algebra_fp64():
    gen = torch.Generator().manual_seed(0)
    z_above, z, eps = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    levels = (0.5, 0.7, 0.3)  # alphabar of z_i, z_{i-1}, z_{i+1}
    assert torch.equal(bdia_step(z_above, z, eps, *levels, gamma=0.0), ddim_step(z, eps, 0.5, 0.7))
    for gamma in (1.0, 0.93, 0.5):
        below = bdia_step(z_above, z, eps, *levels, gamma=gamma)
        assert rel(bdia_inverse_step(below, z, eps, *levels, gamma=gamma), z_above) < 1e-14
    # DDIM there and back with the same eps is the identity
    assert rel(ddim_step(ddim_step(z, eps, 0.5, 0.9), eps, 0.9, 0.5), z) < 1e-14


def plain_ddim(denoiser, grid, z_T, callback):
    """DDIM written out step by step: the oracle of ``ddim_sample`` and of BDIA at ``gamma = 0``."""
    z = z_T
    with torch.no_grad():
        for i in range(grid.num_steps, 0, -1):
            z = ddim_step(z, denoiser(z, grid.t(i)), grid.alphabar(i), grid.alphabar(i - 1))
            callback(i - 1, z)
    return z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps", [1, 8])
def test_ddim_and_gamma_zero_are_plain_ddim_bit_for_bit(dtype, steps):
    """``ddim_sample`` runs the BDIA loop at gamma = 0; both equal the written-out DDIM loop state by state."""
    unet, grid = tiny_unet(dtype), Schedule.from_scheduler(sd_scheduler(), steps)
    z_T = noise(dtype=dtype)
    runs = {
        "plain": lambda d, cb: (plain_ddim(d, grid, z_T, cb), None),
        "ddim": lambda d, cb: (ddim_sample(d, grid, z_T, callback=cb), None),
        "bdia": lambda d, cb: tuple(bdia_sample(d, grid, z_T, gamma=0.0, callback=cb)),
    }
    states, results = {}, {}
    for name, run in runs.items():
        denoiser = Denoiser(unet)
        states[name], callback = collect()
        results[name] = run(denoiser, callback)
        assert denoiser.calls == steps, name
        assert sorted(states[name]) == list(range(steps)), name
    for name in ("ddim", "bdia"):
        assert torch.equal(results[name][0], results["plain"][0]), name
        for i in range(steps):
            assert torch.equal(states[name][i], states["plain"][i]), f"{name} state {i}"
    assert torch.equal(results["bdia"][1], states["plain"][1] if steps > 1 else z_T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [1.0, 0.96])
def test_bdia_pair_inversion_unet2d(dtype, gamma):
    unet, grid = tiny_unet(dtype), Schedule.from_scheduler(sd_scheduler(), 10)
    z_T = noise(dtype=dtype)
    forward, forward_cb = collect()
    backward, backward_cb = collect()
    calls = Denoiser(unet)
    z0, z1 = bdia_sample(calls, grid, z_T, gamma=gamma, callback=forward_cb)
    assert calls.calls == 10
    counted = Denoiser(unet)
    z_T_again = bdia_invert(counted, grid, z0, z1, gamma=gamma, callback=backward_cb)
    assert counted.calls == 9  # one model call per inverse step, none for the plain-DDIM first step
    assert z_T_again.dtype == dtype
    assert rel(z_T_again, z_T) <= PAIR_RTOL[dtype]
    for i in range(2, 10):  # the inverse pass walks the forward trajectory back
        assert rel(backward[i], forward[i]) <= PAIR_RTOL[dtype], f"state {i}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bdia_pair_inversion_text_conditioned_with_guidance(dtype):
    unet, grid = tiny_cond_unet(dtype), Schedule.from_scheduler(sd_scheduler(), 8)
    z_T = noise(dtype=dtype)
    text, empty = text_embeddings(2, dtype)
    cond = dict(encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=4.0)
    z0, z1 = bdia_sample(unet, grid, z_T, gamma=0.97, **cond)
    assert rel(bdia_invert(unet, grid, z0, z1, gamma=0.97, **cond), z_T) <= PAIR_RTOL[dtype]
    # guidance matters: another scale gives another image
    other, _ = bdia_sample(unet, grid, z_T, gamma=0.97, **{**cond, "guidance_scale": 1.5})
    assert rel(other, z0) > 1e-3


def test_guidance_combines_branches():
    unet = tiny_cond_unet()
    z = noise()
    text, empty = text_embeddings(2)
    guided = Denoiser(unet, encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=3.0)
    with torch.no_grad():
        eps_c = unet(z, 500, encoder_hidden_states=text).sample
        eps_u = unet(z, 500, encoder_hidden_states=empty.expand(2, -1, -1)).sample
    assert torch.allclose(guided(z, 500), eps_u + 3.0 * (eps_c - eps_u), atol=1e-5)
    assert guided.calls == 1
    plain = Denoiser(unet, encoder_hidden_states=text)
    assert torch.allclose(plain(z, 500), eps_c, atol=1e-6)


def test_plain_callable_and_learned_variance():
    seen = []

    def eps(z, t, scale=1.0):
        seen.append(t)
        return torch.cat([scale * torch.tanh(z), torch.ones_like(z)], dim=1)  # eps and a "variance" half

    grid = Schedule.from_scheduler(sd_scheduler(), 5)
    z_T = noise(dtype=torch.float64)
    z0, z1 = bdia_sample(eps, grid, z_T, gamma=1.0, scale=0.5)
    assert seen == list(grid.timesteps) and all(isinstance(t, int) for t in seen)
    assert rel(bdia_invert(eps, grid, z0, z1, gamma=1.0, scale=0.5), z_T) < 1e-12


def test_approximate_inversions_are_reported(record_property):
    """DDIM inversion and BDIA inversion from z0 alone are approximate: their error is measured and
    reported (``record_property`` and stdout), only checked to be finite and above the pair's."""
    unet, grid = tiny_unet(torch.float64), Schedule.from_scheduler(sd_scheduler(), 10)
    z_T = noise(dtype=torch.float64)
    ddim_error = rel(ddim_invert(unet, grid, ddim_sample(unet, grid, z_T)), z_T)
    z0, z1 = bdia_sample(unet, grid, z_T, gamma=1.0)
    from_z0_error = rel(bdia_invert_from_z0(unet, grid, z0, gamma=1.0), z_T)
    pair_error = rel(bdia_invert(unet, grid, z0, z1, gamma=1.0), z_T)
    report = dict(ddim_inversion=ddim_error, bdia_from_z0=from_z0_error, bdia_from_pair=pair_error)
    for name, value in report.items():
        record_property(f"relative_zT_error_{name}", value)
    print(f"\nrelative z_T error, tiny random UNet2DModel, 10 steps, fp64: {report}")
    assert all(torch.isfinite(torch.tensor(v)) for v in report.values())
    assert ddim_error > 1e3 * pair_error and from_z0_error > 1e3 * pair_error


def test_guidance_passes_scalar_tensor_conditions_as_they_are():
    """A 0-dim tensor condition (a scale given as a tensor) has no batch to repeat for the two guidance branches:
    the batched call gets it as it is, at the top level and inside a dict condition."""
    seen = []

    def eps(z, t, encoder_hidden_states, scale, extra):
        seen.append((scale, extra["scale"]))
        return torch.tanh(z) * scale + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)

    scale, z = torch.tensor(2.0), noise()
    text, empty = text_embeddings(2)
    guided = Denoiser(eps, encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=3.0,
                      scale=scale, extra={"scale": scale})
    out = guided(z, 500)
    assert len(seen) == 1 and seen[0][0] is scale and seen[0][1] is scale
    eps_c, eps_u = (torch.tanh(z) * 2 + e.mean((1, 2)).view(-1, 1, 1, 1) for e in (text, empty.expand(2, -1, -1)))
    torch.testing.assert_close(out, eps_u + 3.0 * (eps_c - eps_u))


def test_inversion_with_a_small_gamma_warns(caplog):
    """BDIA inversion divides every state's error by gamma: below 0.9 that is logged, from 0.9 on it is not."""
    grid, z = Schedule.from_scheduler(sd_scheduler(), 3), noise(dtype=torch.float64)
    eps = lambda z, t: torch.tanh(z)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="decinv_fast.diffusion.samplers"):
        bdia_invert(eps, grid, z, z, gamma=0.9)
        assert not caplog.records
        bdia_invert(eps, grid, z, z, gamma=0.89)
    assert len(caplog.records) == 1 and "gamma=0.89" in caplog.records[0].getMessage()


def test_approximate_inversions_walk_the_states_they_report():
    """ddim_invert reports states 1..N (N is its result), each from the one below with the model at the next
    timestep; bdia_invert_from_z0 takes state 1 from that first DDIM inversion step and then is bdia_invert from the
    pair (z_0, that z_1), with N model calls."""
    grid, z0 = Schedule.from_scheduler(sd_scheduler(), 5), noise(dtype=torch.float64)
    eps = lambda z, t: torch.tanh(z) * (1 + t / 1000)  # noqa: E731
    ddim_states, from_z0_states = collect(), collect()
    z_T = ddim_invert(eps, grid, z0, callback=ddim_states[1])
    states = {0: z0, **ddim_states[0]}
    assert sorted(states) == [0, 1, 2, 3, 4, 5] and torch.equal(states[5], z_T)
    for i in range(1, 6):
        want = ddim_step(states[i - 1], eps(states[i - 1], grid.t(i)), grid.alphabar(i - 1), grid.alphabar(i))
        assert torch.equal(states[i], want), f"state {i}"
    counted = Denoiser(eps)
    approx = bdia_invert_from_z0(counted, grid, z0, gamma=0.95, callback=from_z0_states[1])
    assert counted.calls == 5 and sorted(from_z0_states[0]) == [1, 2, 3, 4, 5]
    assert torch.equal(from_z0_states[0][1], states[1])
    assert torch.equal(approx, bdia_invert(eps, grid, z0, states[1], gamma=0.95))
