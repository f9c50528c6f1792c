"""AdjointDEIS and optimize_noise: memory flat in N, guided generation reduces the loss, bad inputs named."""

from __future__ import annotations

import math

import pytest
import torch
from adjoint_models import MlpEps, gaussian_eps, loglinear_schedule, problem, smooth_loss
from diffusion_models import noise, sd_scheduler, text_embeddings, tiny_cond_unet, tiny_unet

from decinv_fast.diffusion import (
    Denoiser,
    Schedule,
    adjoint_gradients,
    adjoint_sample,
    bdia_sample,
    ddim_invert,
    ei_sample,
    optimize_noise,
    reversible_bdia_sample,
)
from decinv_fast.memory import cpu_allocator_peak

pytestmark = pytest.mark.usefixtures("single_thread")


def test_memory_is_flat_in_steps_with_recompute():
    unet = tiny_unet(torch.float32)
    z_T = noise(dtype=torch.float32)
    loss = lambda z0: (z0 * z0).sum()

    def peak(steps, **options):
        grid = Schedule.from_scheduler(sd_scheduler(), steps)

        def run():
            z = z_T.clone().requires_grad_(True)
            if options:
                loss(adjoint_sample(unet, grid, z, **options)).backward()
            else:
                loss(ei_sample(unet, grid, z)).backward()

        run()
        return cpu_allocator_peak(run)[1]

    flat_short, flat_long = peak(4, states="recompute"), peak(16, states="recompute")
    cache_long = peak(16, states="cache")
    auto_short, auto_long = peak(4), peak(16)
    assert flat_long < 1.25 * flat_short
    assert auto_long > 2.0 * auto_short and flat_long < 0.5 * auto_long
    assert flat_long < cache_long < auto_long  # the cache keeps N - 1 latents, no graphs


def target_problem(method_kwargs):
    """Match the sample of a hidden z_T*: start elsewhere, Adam on z_T; returns the losses."""
    z_T, mean = problem(seed=5)
    target_noise, _ = problem(seed=9)
    grid = loglinear_schedule(10)
    with torch.no_grad():
        target = ei_sample(gaussian_eps, grid, target_noise, mean=mean)
    loss = lambda z0: ((z0 - target) ** 2).mean()
    return optimize_noise(gaussian_eps, grid, z_T, loss, iterations=15, lr=0.1, mean=mean, **method_kwargs)


@pytest.mark.parametrize("method_kwargs", [dict(method="adjoint"), dict(method="adjoint", order=2),
                                           dict(method="reversible", gamma=0.9), dict(method="autograd")])
def test_optimize_noise_reduces_the_loss(method_kwargs):
    result = target_problem(method_kwargs)
    assert len(result.losses) == 16 and result.losses[-1] < 0.2 * result.losses[0]
    assert result.z_T.shape == result.z0.shape and not result.z_T.requires_grad


def test_optimize_noise_adjoint_and_autograd_agree_over_ddim():
    """With cached states the adjoint gradient is autograd's, so the two runs coincide."""
    a = target_problem(dict(method="adjoint", states="cache"))
    b = target_problem(dict(method="autograd"))
    assert max(abs(x - y) for x, y in zip(a.losses, b.losses, strict=True)) < 1e-9 * a.losses[0]


def test_optimize_conditioning_and_keep_norm():
    unet = tiny_cond_unet(torch.float32)
    grid = Schedule.from_scheduler(sd_scheduler(), 4)
    text, _ = text_embeddings(2)
    z_T = noise()
    result = optimize_noise(unet, grid, z_T, lambda z0: (z0 - 0.5).square().mean(), iterations=4, lr=0.05,
                            optimize=("z_T", "encoder_hidden_states"), keep_norm=True, encoder_hidden_states=text)
    assert result.losses[-1] < result.losses[0]
    assert not torch.equal(result.cond["encoder_hidden_states"], text)
    norms = result.z_T.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(z_T[0].numel())), rtol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(order=3), ValueError, "order"),
    (dict(order=True), ValueError, "order"),
    (dict(order=2.0), ValueError, "order"), (dict(order=torch.tensor(2)), ValueError, "a tensor: pass a Python"),
    (dict(states="disk"), ValueError, "states"),
    (dict(scheme="euler"), ValueError, "scheme"),
    (dict(noise=7, order=2), ValueError, "order"),
    (dict(noise=torch.zeros(3, 2, 3, 4)), ValueError, "noise"),
    (dict(noise=torch.zeros(5, 2, 3)), ValueError, "noise"),
    (dict(noise="seed"), TypeError, "noise"),
    (dict(grad_cond=("mask",)), ValueError, "grad_cond"),
    (dict(params=[torch.zeros(2)]), ValueError, r"params\[0\]"),
    (dict(params=[3.0]), TypeError, r"params\[0\]"),
])
def test_bad_adjoint_arguments_are_named(kwargs, error, match):
    z_T, mean = problem()
    with pytest.raises(error, match=match):
        adjoint_gradients(gaussian_eps, loglinear_schedule(5), z_T, smooth_loss, mean=mean, **kwargs)


def test_bad_loss_and_z_T_are_named():
    z_T, mean = problem()
    grid = loglinear_schedule(5)
    with pytest.raises(TypeError, match="loss"):
        adjoint_gradients(gaussian_eps, grid, z_T, "mse", mean=mean)
    with pytest.raises(ValueError, match="loss"):
        adjoint_gradients(gaussian_eps, grid, z_T, lambda z0: z0, mean=mean)
    with pytest.raises(TypeError, match="z_T"):
        adjoint_gradients(gaussian_eps, grid, z_T.numpy(), smooth_loss, mean=mean)
    with pytest.raises(TypeError, match="z_T"):
        adjoint_sample(tiny_unet(), Schedule.from_scheduler(sd_scheduler(), 3), noise(dtype=torch.float64))
    with pytest.raises(ValueError, match="encoder_hidden_states is required"):
        adjoint_sample(tiny_cond_unet(), Schedule.from_scheduler(sd_scheduler(), 3), noise())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="sgd"), ValueError, "method"),
    (dict(iterations=-1), ValueError, "iterations"),
    (dict(lr=0), ValueError, "lr"),
    (dict(optimize=()), ValueError, "optimize"),
    (dict(optimize=("text",)), ValueError, "optimize"),
    (dict(method="reversible", gamma=0.0), ValueError, "gamma"),
])
def test_bad_optimize_noise_arguments_are_named(kwargs, error, match):
    z_T, mean = problem()
    with pytest.raises(error, match=match):
        optimize_noise(MlpEps(4), loglinear_schedule(4), z_T, smooth_loss, mean=mean, **kwargs)


@pytest.mark.parametrize("loss, match", [
    (lambda z0: z0.sum() * float("nan"), "the loss is nan at iteration 0"),
    (lambda z0: (z0 - z0.detach()).abs().sqrt().sum(), "gradient has NaN/inf values at iteration 0"),  # d sqrt at 0
])
def test_optimize_noise_non_finite_loss_or_gradient_is_an_error(loss, match):
    z_T, mean = problem()
    kept = z_T.clone()
    with pytest.raises(FloatingPointError, match=match):
        optimize_noise(MlpEps(4), loglinear_schedule(4), z_T, loss, iterations=3, mean=mean)
    assert torch.equal(z_T, kept)  # the caller's noise is untouched


@pytest.mark.parametrize("loss, match", [
    (lambda z0: z0.sum() * float("nan"), "adjoint_gradients: the loss is nan"),
    (lambda z0: (z0 - z0.detach()).abs().sqrt().sum(), "adjoint_gradients: the gradient has NaN/inf"),
])
def test_adjoint_gradients_non_finite_loss_or_gradient_is_an_error(loss, match):
    z_T, mean = problem()
    with pytest.raises(FloatingPointError, match=match):
        adjoint_gradients(MlpEps(4), loglinear_schedule(4), z_T, loss, mean=mean)


@pytest.mark.parametrize("run, name", [(adjoint_sample, "z_T"), (ddim_invert, "z_0")])
def test_non_finite_start_state_is_named(run, name):
    z = noise()
    z[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=f"{name}: 1 value"):
        run(tiny_unet(), Schedule.from_scheduler(sd_scheduler(), 3), z)


@pytest.mark.parametrize("method", ["adjoint", "reversible", "autograd"])
def test_optimize_noise_leaves_trainable_weights_without_grad(method):
    """A UNet whose weights require grad (as from_pretrained returns it) gets no ``.grad``."""
    unet = tiny_unet().requires_grad_(True)
    grid = Schedule.from_scheduler(sd_scheduler(), 3)
    optimize_noise(unet, grid, noise(), lambda z0: z0.square().mean(), method=method, iterations=1)
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())


def test_adjoint_sample_differentiates_only_the_conditioning_that_requires_grad():
    """Conditioning that does not require grad (an integer label, a frozen float tensor) is passed through, not
    differentiated; the one that does gets its gradient."""
    z_T, mean = problem()
    labels, frozen = torch.tensor([0, 1]), torch.ones(2, 1, 1, dtype=torch.float64)
    model = lambda z, t, mean, labels, frozen: gaussian_eps(z, t, mean) * (1 + 0.1 * labels.view(-1, 1, 1)) * frozen  # noqa: E731
    z, m = z_T.clone().requires_grad_(True), mean.clone().requires_grad_(True)
    smooth_loss(adjoint_sample(model, loglinear_schedule(4), z, mean=m, labels=labels, frozen=frozen)).backward()
    assert z.grad is not None and m.grad is not None and bool(m.grad.abs().sum() > 0)
    assert frozen.grad is None and not frozen.requires_grad


def test_adjoint_gradients_differentiate_only_the_params_asked_for():
    """``params=None``: no parameter gradients, even for weights that require grad; explicit ``params`` get theirs."""
    unet, grid = tiny_unet().requires_grad_(True), Schedule.from_scheduler(sd_scheduler(), 2)
    loss = lambda z0: z0.square().mean()  # noqa: E731
    out = adjoint_gradients(unet, grid, noise(), loss)
    assert out.params == () and all(p.grad is None for p in unet.parameters())
    weight = unet.conv_out.weight
    out = adjoint_gradients(unet, grid, noise(), loss, params=[weight])
    assert len(out.params) == 1 and out.params[0].shape == weight.shape and bool(out.params[0].abs().sum() > 0)
    single = adjoint_gradients(unet, grid, noise(), loss, params=weight)  # one tensor, not a sequence of its rows
    assert len(single.params) == 1 and torch.equal(single.params[0], out.params[0])


@pytest.mark.parametrize("method", ["adjoint", "reversible", "autograd"])
def test_gradient_apis_work_under_inference_mode(method):
    """Called from code under ``torch.inference_mode`` (noise and embeddings made there too), the
    gradient APIs give the bits they give outside it."""
    unet, grid = tiny_cond_unet(), Schedule.from_scheduler(sd_scheduler(), 3)
    text, _ = text_embeddings(2)
    loss = lambda z0: z0.square().mean()  # noqa: E731

    def run():
        kw = dict(encoder_hidden_states=text.clone())
        opt = optimize_noise(unet, grid, noise(), loss, method=method, iterations=2,
                             optimize=("z_T", "encoder_hidden_states"), **kw)
        grads = adjoint_gradients(unet, grid, noise(), loss, grad_cond=("encoder_hidden_states",), **kw)
        return opt.losses, opt.z_T, grads.z_T, grads.cond["encoder_hidden_states"]

    expected = run()
    with torch.inference_mode():
        got = run()
    assert got[0] == expected[0] and all(torch.equal(a, b) for a, b in zip(got[1:], expected[1:], strict=True))


@pytest.mark.parametrize("sample", [
    lambda model, grid, z, cond: adjoint_sample(model, grid, z, order=2, **cond),
    lambda model, grid, z, cond: reversible_bdia_sample(model, grid, z, gamma=0.97, **cond)[0],
])
def test_a_bound_denoiser_is_differentiated_like_its_model_and_keywords(sample):
    """The gradient functions take a bound Denoiser apart (its keywords) into exactly the model and conditioning
    they would get unbound: same sample and gradients bit for bit; more conditioning for it is a TypeError."""
    unet, grid = tiny_cond_unet(torch.float64), Schedule.from_scheduler(sd_scheduler(), 4)
    text, empty = text_embeddings(2, torch.float64)
    results = []
    for bound in (False, True):
        z_T, pos, neg = (t.clone().requires_grad_(True) for t in (noise(dtype=torch.float64), text, empty))
        cond = dict(encoder_hidden_states=pos, negative_encoder_hidden_states=neg, guidance_scale=3.0)
        model = Denoiser(unet, **cond) if bound else unet
        z0 = sample(model, grid, z_T, {} if bound else cond)
        z0.square().sum().backward()
        results.append((z0.detach(), z_T.grad, pos.grad, neg.grad))
        if bound:
            assert model.keywords == cond
            with pytest.raises(TypeError, match=r"conditioning \['guidance_scale'\] given for a Denoiser that is"):
                sample(model, grid, z_T, dict(guidance_scale=2.0))
    for unbound, bound in zip(*results, strict=True):
        assert torch.equal(unbound, bound)


@pytest.mark.parametrize("method", ["adjoint", "reversible", "autograd"])
def test_optimize_noise_callback_sees_every_loss_and_the_final_one(method):
    """``callback(iteration, loss)`` after each of the ``iterations`` updates and once more for the final loss, which
    is the loss of the returned sample."""
    z_T, mean = problem(seed=5)
    loss = lambda z0: (z0 - 1.0).square().mean()  # noqa: E731
    seen = []
    result = optimize_noise(gaussian_eps, loglinear_schedule(5), z_T, loss, method=method, iterations=3, lr=0.1,
                            callback=lambda i, value: seen.append((i, value)), mean=mean)
    assert seen == list(enumerate(result.losses)) and len(seen) == 4
    assert result.losses[-1] == float(loss(result.z0)) and result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("method_kwargs", [dict(method="adjoint", order=1), dict(method="adjoint", order=2),
                                           dict(method="reversible", gamma=0.9), dict(method="autograd")])
def test_optimize_noise_samples_with_the_sampler_it_is_given(method_kwargs):
    """The returned ``z0`` is the sample of the returned ``z_T`` by the chosen sampler and its options (``order``
    for the adjoint, ``gamma`` for the reversible BDIA pass, DDIM for autograd)."""
    z_T, mean = problem(seed=5)
    grid = loglinear_schedule(8)
    result = optimize_noise(gaussian_eps, grid, z_T, lambda z0: z0.square().mean(), iterations=2, lr=0.1, mean=mean,
                            **method_kwargs)
    if method_kwargs["method"] == "reversible":
        want = bdia_sample(gaussian_eps, grid, result.z_T, gamma=0.9, mean=mean).z0
    else:
        want = ei_sample(gaussian_eps, grid, result.z_T, order=method_kwargs.get("order", 1), mean=mean)
    torch.testing.assert_close(result.z0, want, rtol=1e-12, atol=1e-12)


def test_keep_norm_leaves_a_z_T_that_is_not_optimised_alone():
    """``keep_norm`` rescales the optimised ``z_T``; optimising the conditioning only, ``z_T`` is kept as given."""
    z_T, mean = problem(seed=5)
    z_T = 3.0 * z_T  # far from the Gaussian shell: a rescale would show
    result = optimize_noise(gaussian_eps, loglinear_schedule(8), z_T, lambda z0: (z0 - 1.0).square().mean(),
                            iterations=2, lr=0.1, optimize="mean", keep_norm=True, mean=mean)
    assert torch.equal(result.z_T, z_T)
    assert not torch.equal(result.cond["mean"], mean)


def test_optimize_noise_with_no_iterations_samples_the_start():
    """``iterations=0`` makes no update: the start, its sample and its loss come back."""
    z_T, mean = problem(seed=5)
    grid = loglinear_schedule(8)
    result = optimize_noise(gaussian_eps, grid, z_T, lambda z0: z0.square().mean(), iterations=0, mean=mean)
    assert torch.equal(result.z_T, z_T) and len(result.losses) == 1
    torch.testing.assert_close(result.z0, ei_sample(gaussian_eps, grid, z_T, mean=mean), rtol=1e-12, atol=1e-12)


def test_optimize_noise_refuses_to_optimise_an_integer_condition():
    z_T, mean = problem(seed=5)
    with pytest.raises(ValueError, match="optimize names 'labels', which must be 'z_T' or a floating-point"):
        optimize_noise(lambda z, t, mean, labels: gaussian_eps(z, t, mean), loglinear_schedule(8), z_T,
                       lambda z0: z0.square().mean(), optimize=("z_T", "labels"), mean=mean,
                       labels=torch.zeros(2, dtype=torch.long))
