"""AdjointDEIS (probability-flow ODE): convergence orders against exact / fine-grid gradients, and
equality with autograd through the sampler when the forward states are cached (fp64 throughout).

Orders are fitted as the log-log slope of the relative gradient error over N = 20, 40, 80, 160 on a
grid evenly spaced in log-SNR (:mod:`adjoint_models`). References: the closed-form flow of the
Gaussian model (exact), and autograd through the 2M sampler at N = 2560 (independent of the adjoint
code: discretise-then-differentiate) for the nonlinear model.
"""

from __future__ import annotations

import math

import pytest
import torch
from adjoint_models import (
    NS,
    MlpEps,
    gaussian_eps,
    gaussian_flow,
    loglinear_schedule,
    node_state_errors,
    problem,
    slope,
    smooth_loss,
)
from diffusion_models import noise, rel, sd_scheduler, text_embeddings, tiny_cond_unet, tiny_unet

from decinv_fast.diffusion import Schedule, adjoint_gradients, adjoint_sample, adjoint_solver, ddim_sample, ei_sample

SLOPE = {1: -0.8, 2: -1.6}  # issue 6: fitted slopes at most these


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def mlp_reference():
    """Gradients w.r.t. (z_T, mean, W, U, b) by autograd through the 2M sampler at N = 2560."""
    z_T, mean = problem()
    model = MlpEps(4)
    params = [p.clone().requires_grad_(True) for p in model.params()]
    model.w, model.u, model.b = params
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    value = smooth_loss(ei_sample(model, loglinear_schedule(2560), z, order=2, mean=m))
    return model, params, torch.autograd.grad(value, [z, m, *params])


def gaussian_exact(z_T, mean):
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    return torch.autograd.grad(smooth_loss(gaussian_flow(z, m)), [z, m])


@pytest.mark.parametrize("order", [1, 2])
def test_forward_sampler_order(order):
    z_T, mean = problem()
    exact = gaussian_flow(z_T, mean)
    errors = [rel(ei_sample(gaussian_eps, loglinear_schedule(n), z_T, order=order, mean=mean), exact) for n in NS]
    assert slope(errors) <= SLOPE[order]


def test_order1_sampler_is_ddim_bit_for_bit():
    z_T, mean = problem()
    grid = loglinear_schedule(20)
    assert torch.equal(ei_sample(gaussian_eps, grid, z_T, mean=mean), ddim_sample(gaussian_eps, grid, z_T, mean=mean))


@pytest.mark.parametrize("states", ["recompute", "cache"])
@pytest.mark.parametrize("order", [1, 2])
def test_order_against_exact_gaussian_flow(order, states):
    z_T, mean = problem()
    g_z, g_mean = gaussian_exact(z_T, mean)
    err_z, err_c = [], []
    for n in NS:
        got = adjoint_gradients(gaussian_eps, loglinear_schedule(n), z_T, smooth_loss, order=order, states=states,
                                grad_cond="mean", mean=mean)
        err_z.append(rel(got.z_T, g_z))
        err_c.append(rel(got.cond["mean"], g_mean))
    assert slope(err_z) <= SLOPE[order] and slope(err_c) <= SLOPE[order]
    assert err_z[-1] < (2e-2 if order == 1 else 5e-4)


@pytest.mark.parametrize("scheme", ["transpose", "explicit"])
@pytest.mark.parametrize("states", ["recompute", "cache"])
@pytest.mark.parametrize("order", [1, 2])
def test_order_against_fine_grid_nonlinear(mlp_reference, order, states, scheme):
    model, params, reference = mlp_reference
    z_T, mean = problem()
    errors = [[] for _ in reference]
    for n in NS:
        got = adjoint_gradients(model, loglinear_schedule(n), z_T, smooth_loss, order=order, states=states,
                                grad_cond=("mean",), params=params, scheme=scheme, mean=mean)
        for k, (a, b) in enumerate(zip([got.z_T, got.cond["mean"], *got.params], reference, strict=True)):
            errors[k].append(rel(a, b))
    slopes = [slope(e) for e in errors]  # z_T, the conditioning, and the three parameter tensors
    assert max(slopes) <= SLOPE[order], slopes
    assert errors[0][-1] < (3e-2 if order == 1 else 1e-3)


def test_a_missing_alpha_factor_is_detected(mlp_reference, monkeypatch):
    """The order test discriminates: an adjoint carried with one extra factor ``a`` does not converge."""
    model, params, reference = mlp_reference
    z_T, mean = problem()
    true_scale = adjoint_solver.scale
    monkeypatch.setattr(adjoint_solver, "scale", lambda ab, k: true_scale(ab, k) * math.sqrt(ab))
    errors = [rel(adjoint_gradients(model, loglinear_schedule(n), z_T, smooth_loss, states="cache",
                                    scheme="explicit", mean=mean).z_T, reference[0]) for n in NS]
    assert slope(errors) > -0.3 and min(errors) > 0.1


@pytest.mark.parametrize("steps", [1, 2, 20])
@pytest.mark.parametrize("order", [1, 2])
def test_cached_transpose_equals_autograd_through_sampler(mlp_reference, order, steps):
    model, params, _ = mlp_reference
    z_T, mean = problem()
    grid = loglinear_schedule(steps)
    got = adjoint_gradients(model, grid, z_T, smooth_loss, order=order, states="cache", grad_cond="mean",
                            params=params, mean=mean)
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    want = torch.autograd.grad(smooth_loss(ei_sample(model, grid, z, order=order, mean=m)), [z, m, *params])
    for a, b in zip([got.z_T, got.cond["mean"], *got.params], want, strict=True):
        assert rel(a, b) < 1e-12
    assert got.model_calls == 2 * grid.num_steps


@pytest.mark.parametrize("order, bound", [(1, -1.6), (2, -2.4)])
def test_recomputed_states_converge_to_autograd(mlp_reference, order, bound):
    """O(1)-memory states (rebuilt upwards, eqs. S, S') vs autograd through the same sampler: O(h^2) / O(h^3)."""
    model, params, _ = mlp_reference
    z_T, mean = problem()
    errors = []
    for n in NS:
        grid = loglinear_schedule(n)
        got = adjoint_gradients(model, grid, z_T, smooth_loss, order=order, mean=mean)
        z = z_T.clone().requires_grad_(True)
        want, = torch.autograd.grad(smooth_loss(ei_sample(model, grid, z, order=order, mean=mean)), [z])
        errors.append(rel(got.z_T, want))
    assert slope(errors) <= bound and errors[-1] < 1e-3


def test_recomputed_2m_states_are_third_order_near_the_start():
    """The 2M sweep rebuilds states upwards with the order-2 interpolant from node 2 on (eq. S): the states of the
    first nodes it rebuilds that way (a fixed number of steps from z_0) are O(h^3) from the forward ones."""
    model = MlpEps(4)
    errors = []
    for n in NS:
        per_node = node_state_errors(model, n, order=2)
        errors.append(max(per_node[j] for j in (2, 3, 4)))
    assert slope(errors) <= -3.0 and errors[0] < 2e-3


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_unet_conditioning_gradients(guidance):
    """A real UNet2DConditionModel on SD's grid (alphabar_0 < 1), text embeddings differentiated."""
    unet = tiny_cond_unet(torch.float64)
    grid = Schedule.from_scheduler(sd_scheduler(), 8)
    z_T = noise(dtype=torch.float64)
    text, empty = text_embeddings(2, torch.float64)
    cond = dict(encoder_hidden_states=text)
    if guidance != 1.0:
        cond.update(guidance_scale=guidance, negative_encoder_hidden_states=empty)
    loss = lambda z0: (z0 * torch.linspace(-1, 1, z0.numel(), dtype=z0.dtype).view_as(z0)).sum()
    cached = adjoint_gradients(unet, grid, z_T, loss, order=2, states="cache", grad_cond="encoder_hidden_states",
                               **cond)
    z, c = z_T.clone().requires_grad_(True), text.clone().requires_grad_(True)
    want = torch.autograd.grad(loss(ei_sample(unet, grid, z, order=2, **{**cond, "encoder_hidden_states": c})), [z, c])
    assert rel(cached.z_T, want[0]) < 1e-10 and rel(cached.cond["encoder_hidden_states"], want[1]) < 1e-10
    recomputed = adjoint_gradients(unet, grid, z_T, loss, order=2, grad_cond="encoder_hidden_states", **cond)
    assert rel(recomputed.z_T, want[0]) < 0.05 and rel(recomputed.cond["encoder_hidden_states"], want[1]) < 0.05


@pytest.mark.parametrize("order", [1, 2])
def test_noise_free_final_state(order):
    """``alphabar_0 = 1`` (``lambda_0 = inf``): the last 2M step is first order, the adjoint still exact."""
    unet = tiny_unet(torch.float64)
    grid = Schedule.from_scheduler(sd_scheduler(set_alpha_to_one=True), 6)
    assert grid.alphabar(0) == 1.0
    z_T = noise(dtype=torch.float64)
    loss = lambda z0: (torch.cos(z0)).sum()
    z = z_T.clone().requires_grad_(True)
    want, = torch.autograd.grad(loss(ei_sample(unet, grid, z, order=order)), [z])
    assert rel(adjoint_gradients(unet, grid, z_T, loss, order=order, states="cache").z_T, want) < 1e-12
    assert rel(adjoint_gradients(unet, grid, z_T, loss, order=order).z_T, want) < 0.05


def test_adjoint_sample_is_a_drop_in_autograd_function():
    """``adjoint_sample`` composes with autograd: leaves that require grad get ``.grad``."""
    z_T, mean = problem()
    grid = loglinear_schedule(10)
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    smooth_loss(adjoint_sample(gaussian_eps, grid, z, states="cache", mean=m)).backward()
    z2, m2 = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    smooth_loss(ei_sample(gaussian_eps, grid, z2, mean=m2)).backward()
    assert rel(z.grad, z2.grad) < 1e-12 and rel(m.grad, m2.grad) < 1e-12
    with torch.no_grad():
        assert torch.equal(adjoint_sample(gaussian_eps, grid, z_T, mean=mean), ei_sample(gaussian_eps, grid, z_T,
                                                                                          mean=mean))


def test_cache_keeps_the_n_minus_1_intermediate_states_only():
    """``states="cache"`` saves ``z_T``, ``z_0`` and the ``N - 1`` states between; ``"recompute"`` only the ends."""
    model, (z_T, mean) = MlpEps(4), problem()
    z = z_T.clone().requires_grad_(True)
    for states, saved in (("cache", 2 + 5 - 1), ("recompute", 2)):
        z0 = adjoint_sample(model, loglinear_schedule(5), z, states=states, params=[], mean=mean)
        assert len(z0.grad_fn.saved_tensors) == saved, states


def test_cached_states_survive_a_retained_graph():
    """``states="cache"``: a second backward through a graph kept with ``retain_graph=True`` uses the same cached
    states (the same gradient as the first, == autograd); once the graph is freed, a third backward refuses."""
    z_T, mean = problem()
    model = MlpEps(4)
    grid = loglinear_schedule(10)
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    want = torch.autograd.grad(smooth_loss(ei_sample(model, grid, z, order=2, mean=m)), [z, m])
    value = smooth_loss(adjoint_sample(model, grid, z, order=2, states="cache", mean=m))
    first = torch.autograd.grad(value, [z, m], retain_graph=True)
    second = torch.autograd.grad(value, [z, m])
    for a, b, c in zip(first, second, want, strict=True):
        assert torch.equal(a, b) and rel(a, c) < 1e-12
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(value, [z, m])
