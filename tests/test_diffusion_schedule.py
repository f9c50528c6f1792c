"""The DDIM grid: diffusers-compatible timesteps, noise levels, and agreement with DDIMScheduler.step."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusion_models import sd_scheduler, tiny_unet

from decinv_fast.diffusion import Schedule, as_schedule, ddim_invert, ddim_sample, ddim_timesteps


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_match_ddim_scheduler(spacing, offset):
    """Every step count up to the training steps (trailing spacing differs from a plain formula at half-integer
    ties, first at n = 48)."""
    checked = 0
    for n in range(1, 1001):
        scheduler = sd_scheduler(timestep_spacing=spacing, steps_offset=offset)
        scheduler.set_timesteps(n)
        theirs = scheduler.timesteps.tolist()
        ours = ddim_timesteps(n, num_train_timesteps=1000, spacing=spacing, steps_offset=offset)
        assert len(ours) == n
        if len(theirs) != n:
            # diffusers' float arange emits an extra trailing -1 for a few step counts (e.g. 61)
            assert spacing == "trailing" and theirs[:-1] == ours and theirs[-1] == -1
            continue
        assert ours == theirs, (spacing, offset, n)
        checked += 1
    assert checked >= 900  # trailing: 62 of the 1000 carry the extra -1


def test_levels_follow_the_scheduler():
    scheduler = sd_scheduler()
    scheduler.set_timesteps(10)
    grid = Schedule.from_scheduler(scheduler)
    table = scheduler.alphas_cumprod.double()
    assert grid.timesteps == tuple(scheduler.timesteps.tolist())
    assert grid.num_steps == 10 and grid.t(10) == 901 and grid.t(1) == 1
    assert grid.alphabar(0) == pytest.approx(float(scheduler.final_alpha_cumprod), abs=0)
    for i in range(1, 11):
        assert grid.alphabar(i) == float(table[grid.t(i)])
    assert Schedule.from_scheduler(sd_scheduler(), 10) == grid  # same grid from num_inference_steps
    assert Schedule.from_scheduler(sd_scheduler(), timesteps=scheduler.timesteps) == grid
    assert Schedule.from_scheduler(sd_scheduler(set_alpha_to_one=True), 10).alphabar(0) == 1.0


def test_custom_grid_from_alphas_cumprod():
    table = torch.linspace(0.999, 0.01, 100)
    grid = Schedule.from_alphas_cumprod(table, [90, 41, 3], final_alpha_cumprod=0.9995)
    assert grid.num_steps == 3 and grid.t(3) == 90 and grid.t(1) == 3
    assert grid.alphas_cumprod == (0.9995, float(table[3]), float(table[41]), float(table[90]))


@pytest.mark.parametrize("kw", [dict(steps_offset=1), dict(steps_offset=0), dict(timestep_spacing="trailing")])
def test_ddim_sample_matches_scheduler_step(kw):
    """Where diffusers' step lands on the next grid point, our DDIM is its DDIM."""
    unet = tiny_unet()
    scheduler = sd_scheduler(**kw)
    scheduler.set_timesteps(10)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = z.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            ref = scheduler.step(unet(ref, t).sample, t, ref).prev_sample
    ours = ddim_sample(unet, scheduler, z)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_clipping_scheduler_warns(caplog):
    scheduler = sd_scheduler(clip_sample=True)
    with caplog.at_level(logging.WARNING, logger="decinv_fast.diffusion.schedule"):
        Schedule.from_scheduler(scheduler, 4)
    assert "clip_sample" in caplog.text


def test_ddim_inverse_scheduler_gives_the_same_grid():
    """diffusers' DDIMInverseScheduler keeps alphabar_0 as ``initial_alpha_cumprod`` (no ``final_alpha_cumprod``)
    and lists its timesteps ascending; its grid is the forward scheduler's, and ddim_invert on it is its step loop."""
    from diffusers import DDIMInverseScheduler

    forward = Schedule.from_scheduler(sd_scheduler(), 10)
    inverse = DDIMInverseScheduler.from_config(sd_scheduler().config)
    assert Schedule.from_scheduler(inverse, 10) == forward  # alphabar_0 was 1.0, not alphas_cumprod[0]
    inverse.set_timesteps(10)
    assert Schedule.from_scheduler(inverse) == forward  # its ascending timesteps were refused
    unet, z0 = tiny_unet(torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ref = z0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            ref = inverse.step(unet(ref, t).sample, t, ref).prev_sample
    ours = ddim_invert(unet, inverse, z0)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())  # diffusers' fp32 coefficients


@pytest.mark.parametrize("skip_prk_steps", [False, True])
def test_a_scheduler_whose_timesteps_repeat_is_refused_with_what_to_pass(skip_prk_steps):
    """PNDMScheduler evaluates the model twice at some timesteps: its Runge-Kutta warm-up (``skip_prk_steps=False``,
    at half steps too) and its first PLMS step even with ``skip_prk_steps=True``. Such timesteps are no DDIM grid (nor
    are their distinct values, with the half steps): the error says so and names ``num_inference_steps``, which gives
    the DDIM grid on the scheduler's noise table and spacing; explicit ``timesteps`` are checked against that grid."""
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              set_alpha_to_one=False, steps_offset=1, skip_prk_steps=skip_prk_steps)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"^scheduler\.timesteps repeat \(t=[0-9, ]*801\b.*PNDMScheduler.*Runge-Kutta.*"
                                         r"pass num_inference_steps=10 .*instead"):
        Schedule.from_scheduler(scheduler)
    grid = Schedule.from_scheduler(scheduler, 10)
    assert grid.timesteps == Schedule.from_scheduler(sd_scheduler(), 10).timesteps == tuple(range(901, 0, -100))
    table = scheduler.alphas_cumprod.double()
    assert grid.alphas_cumprod == (float(scheduler.final_alpha_cumprod), *(float(table[t]) for t in range(1, 902, 100)))
    distinct = set(scheduler.timesteps.tolist())
    assert distinct == set(grid.timesteps) if skip_prk_steps else distinct > set(grid.timesteps)  # PRK's half steps
    assert Schedule.from_scheduler(scheduler, timesteps=list(grid.timesteps)) == grid


def test_as_many_inference_steps_as_training_timesteps():
    """``num_inference_steps`` may equal ``num_train_timesteps`` (every timestep once, as DDIMScheduler allows);
    one more is refused."""
    scheduler = sd_scheduler(num_train_timesteps=10, steps_offset=0)
    scheduler.set_timesteps(10)
    assert ddim_timesteps(10, num_train_timesteps=10) == scheduler.timesteps.tolist() == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="num_inference_steps=11 exceeds num_train_timesteps=10"):
        ddim_timesteps(11, num_train_timesteps=10)


def test_repeated_timesteps_and_flat_noise_tables():
    """A repeated (or boolean) timestep is not a grid (strictly decreasing ints); two different timesteps at the same
    noise level are (the table must not *increase* with t)."""
    table = sd_scheduler().alphas_cumprod.clone()
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule.from_alphas_cumprod(table, [501, 501, 1])
    with pytest.raises(ValueError, match="integer timesteps, got True"):
        Schedule.from_alphas_cumprod(table, [501, True])
    table[501] = table[251]
    grid = Schedule.from_alphas_cumprod(table, [751, 501, 251, 1])
    assert grid.alphabar(2) == grid.alphabar(3) == float(table[251])


def test_as_schedule_checks_the_step_count_of_a_schedule():
    grid = Schedule.from_scheduler(sd_scheduler(), 4)
    assert as_schedule(grid, 4) is grid and as_schedule(grid) is grid
    with pytest.raises(ValueError, match="num_inference_steps=5 but the Schedule has 4 steps"):
        as_schedule(grid, 5)
    for bad in (4.0, True):  # as a diffusers scheduler's step count is checked
        with pytest.raises(ValueError, match="num_inference_steps must be a positive int"):
            as_schedule(grid, bad)


def test_thresholding_scheduler_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="decinv_fast.diffusion.schedule"):
        Schedule.from_scheduler(sd_scheduler(thresholding=True), 4)
    assert "thresholding=True is ignored" in caplog.text
