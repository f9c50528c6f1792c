"""AdjointDEIS for the diffusion SDE with recorded noise, against autograd through the same noise (fp64).

The SDE sampler is DDIM with eta = 1 on the grid (checked against diffusers' ``DDIMScheduler.step``).
With the forward states cached the adjoint equals autograd through the sampler with the same
noise; with recomputed states (the path rebuilt backwards with the recorded noise) it converges to
it; and along one Brownian path refined with N it converges to the fine-grid pathwise gradient.
"""

from __future__ import annotations

import pytest
import torch
from adjoint_models import (
    NS,
    MlpEps,
    brownian_noise,
    loglinear_schedule,
    node_state_errors,
    problem,
    slope,
    smooth_loss,
)
from diffusion_models import noise, rel, sd_scheduler, tiny_unet

from decinv_fast.diffusion import Schedule, adjoint_gradients, ei_sample
from decinv_fast.diffusion.ei import StepNoise

pytestmark = pytest.mark.usefixtures("single_thread")


def autograd_sde(model, n: int, path_noise: torch.Tensor):
    z_T, mean = problem()
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    value = smooth_loss(ei_sample(model, loglinear_schedule(n), z, noise=path_noise, mean=m))
    return torch.autograd.grad(value, [z, m])


def adjoint_sde(model, n: int, path_noise, states: str):
    z_T, mean = problem()
    got = adjoint_gradients(model, loglinear_schedule(n), z_T, smooth_loss, noise=path_noise, states=states,
                            grad_cond="mean", mean=mean)
    return got.z_T, got.cond["mean"]


def test_sde_step_is_ddim_eta_one():
    scheduler = sd_scheduler()
    scheduler.set_timesteps(10)
    unet = tiny_unet(torch.float64)
    z_T = noise(dtype=torch.float64)
    recorded = torch.randn(10, *z_T.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = ei_sample(unet, Schedule.from_scheduler(scheduler), z_T, noise=recorded)
    z = z_T
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            eps = unet(z, t).sample
            z = scheduler.step(eps, t, z, eta=1.0, variance_noise=recorded[k]).prev_sample
    assert rel(ours, z) < 1e-6  # diffusers forms its coefficients from fp32 alphas_cumprod scalars


@pytest.mark.parametrize("n", [1, 2, 20])
def test_cached_sde_adjoint_equals_autograd_with_the_same_noise(n):
    model = MlpEps(4)
    path_noise = brownian_noise(n, problem()[0].shape, fine_steps=160)
    want = autograd_sde(model, n, path_noise)
    got = adjoint_sde(model, n, path_noise, "cache")
    assert rel(got[0], want[0]) < 1e-10 and rel(got[1], want[1]) < 1e-10


def test_recomputed_sde_adjoint_converges_to_autograd_with_the_same_noise():
    """States rebuilt backwards from z_0 with the recorded noise (O(1) memory): O(h^2) from autograd's."""
    model = MlpEps(4)
    err_z, err_c = [], []
    for n in NS:
        path_noise = brownian_noise(n, problem()[0].shape, seed=1)
        want = autograd_sde(model, n, path_noise)
        got = adjoint_sde(model, n, path_noise, "recompute")
        err_z.append(rel(got[0], want[0]))
        err_c.append(rel(got[1], want[1]))
    assert slope(err_z) <= -1.5 and slope(err_c) <= -1.5
    assert err_z[-1] < 1e-2 and err_c[-1] < 2e-3


def test_recompute_starts_from_z0_with_the_recorded_noise():
    """The first rebuilt state inverts the sampling step 1 -> 0 with eps(z_0, t_1) and that step's recorded noise:
    O(h) from the forward z_1 (without the noise it is off by the noise's share of the step)."""
    model = MlpEps(4)
    errors = [node_state_errors(model, n, noise=brownian_noise(n, problem()[0].shape, seed=1))[1] for n in NS]
    assert slope(errors) <= -0.9 and errors[0] < 5e-3


def test_sde_gradient_converges_along_one_brownian_path():
    model = MlpEps(4)
    shape = problem()[0].shape
    reference = autograd_sde(model, 1280, brownian_noise(1280, shape, seed=3))
    errors = [[], []]
    for n in NS:
        got = adjoint_sde(model, n, brownian_noise(n, shape, seed=3), "cache")
        errors[0].append(rel(got[0], reference[0]))
        errors[1].append(rel(got[1], reference[1]))
    assert slope(errors[0]) <= -0.8 and slope(errors[1]) <= -0.8


def test_seeded_noise_is_regenerated_identically():
    """An int seed gives the same noise in the forward and the backward pass (O(1) memory)."""
    model = MlpEps(4)
    z_T, mean = problem()
    grid = loglinear_schedule(20)
    steps = StepNoise(11, 20, z_T)
    stacked = torch.stack([steps(k) for k in range(20)])
    assert torch.equal(ei_sample(model, grid, z_T, noise=11, mean=mean), ei_sample(model, grid, z_T, noise=stacked,
                                                                                    mean=mean))
    seeded = adjoint_sde(model, 20, 11, "cache")
    recorded = adjoint_sde(model, 20, stacked, "cache")
    assert torch.equal(seeded[0], recorded[0]) and torch.equal(seeded[1], recorded[1])
    assert not torch.equal(StepNoise(11, 20, z_T)(3), StepNoise(12, 20, z_T)(3))


def test_recompute_sweep_draws_each_seeded_noise_once(monkeypatch):
    """The backward sweep needs step k's noise twice in a row (rebuild, then the fixed-point pass);
    a seeded noise is regenerated from its seed, so it is drawn once and reused."""
    drawn = []
    draw = StepNoise.__call__
    monkeypatch.setattr(StepNoise, "__call__", lambda self, k: (drawn.append(k), draw(self, k))[1])
    n = NS[0]
    adjoint_sde(MlpEps(4), n, 7, "recompute")
    backward = drawn[n:]  # after the forward pass's n draws
    assert backward and len(backward) == len(set(backward))


def test_seeded_noise_of_neighbouring_seeds_is_not_shifted():
    """Seed s + 1 is no copy of seed s shifted by a step: every (seed, step) draws its own noise."""
    z = torch.zeros(2, 3)
    first, second = StepNoise(11, 4, z), StepNoise(12, 4, z)
    for k in range(3):
        assert not torch.equal(first(k + 1), second(k))
        assert not torch.equal(second(k + 1), first(k))


def test_recorded_noise_runs_in_the_dtype_of_the_state():
    """Recorded noise in another dtype (fp64 noise, fp32 state) is cast to the state's: the pass stays in fp32."""
    grid = Schedule.from_scheduler(sd_scheduler(), 4)
    z_T = noise(dtype=torch.float32)
    recorded = torch.randn(4, *z_T.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = lambda z, t: torch.tanh(z)  # noqa: E731
    for given in (recorded, list(recorded)):
        z0 = ei_sample(eps, grid, z_T, noise=given)
        assert z0.dtype == torch.float32
        assert torch.equal(z0, ei_sample(eps, grid, z_T, noise=recorded.float()))


def test_a_seed_names_one_noise_path_in_every_dtype():
    """Seeded noise is drawn in float64 and cast: an fp32 and an fp64 pass with the same seed see the same path."""
    z = noise()
    for k in range(3):
        wide = StepNoise(7, 3, z.double())(k)
        assert wide.dtype == torch.float64
        assert torch.equal(StepNoise(7, 3, z)(k), wide.float())


def test_seeded_noise_of_a_batch_s_first_samples_is_theirs_alone_and_a_later_one_s_can_be_passed():
    """A seed draws a step's noise for the whole batch at once (docs/adjoint_gradients.md): the first samples see
    what they see alone; a later sample runs alone with its batch's noise passed as a tensor."""
    unet = tiny_unet(torch.float64)
    grid = Schedule.from_scheduler(sd_scheduler(), 3)
    z_T = noise((3, 4, 8, 8), torch.float64)
    batch = ei_sample(unet, grid, z_T, noise=5)
    torch.testing.assert_close(batch[:2], ei_sample(unet, grid, z_T[:2], noise=5), rtol=1e-12, atol=1e-12)
    drawn = StepNoise(5, 3, z_T)
    last = torch.stack([drawn(k)[2:] for k in range(3)])
    torch.testing.assert_close(batch[2:], ei_sample(unet, grid, z_T[2:], noise=last), rtol=1e-12, atol=1e-12)
