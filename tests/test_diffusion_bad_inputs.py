"""Bad input to the diffusion module gives clear errors naming the argument."""

from __future__ import annotations

import math
import re

import pytest
import torch
from diffusion_models import LinearPatchVae, noise, sd_scheduler, text_embeddings, tiny_cond_unet, tiny_unet

import decinv_fast
import decinv_fast.diffusion.pipeline as pipeline
from decinv_fast.diffusion import (
    Schedule,
    adjoint_sample,
    bdia_inverse_step,
    bdia_invert,
    bdia_invert_from_z0,
    bdia_sample,
    bdia_step,
    ddim_coefficients,
    ddim_invert,
    ddim_sample,
    ddim_step,
    ei_sample,
)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def grid():
    return Schedule.from_scheduler(sd_scheduler(), 4)


@pytest.mark.parametrize("gamma", [0, 0.0, -0.1, 1.0001, 2, float("nan"), True, "1"])
def test_inversion_gamma_outside_open_closed_unit_interval(unet, grid, gamma):
    z = noise()
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\]"):
        bdia_invert(unet, grid, z, z, gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):
        bdia_invert_from_z0(unet, grid, z, gamma=gamma)


@pytest.mark.parametrize("gamma", [-0.5, 1.5])
def test_sampling_gamma_outside_unit_interval(unet, grid, gamma):
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        bdia_sample(unet, grid, noise(), gamma=gamma)


def test_timesteps_not_matching_the_scheduler():
    with pytest.raises(ValueError, match=r"timesteps \[900, 500, 1\] do not match the scheduler's grid"):
        Schedule.from_scheduler(sd_scheduler(), timesteps=[900, 500, 1])
    scheduler = sd_scheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="do not match"):
        Schedule.from_scheduler(scheduler, timesteps=[751, 501, 251, 2])
    with pytest.raises(ValueError, match="num_inference_steps=5 but 4 timesteps"):
        Schedule.from_scheduler(scheduler, 5, timesteps=scheduler.timesteps)
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule.from_alphas_cumprod(scheduler.alphas_cumprod, [1, 501])
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        Schedule.from_alphas_cumprod(scheduler.alphas_cumprod, [1000, 1])
    with pytest.raises(ValueError, match="integer timesteps"):
        Schedule.from_alphas_cumprod(scheduler.alphas_cumprod, [500.5, 1])
    with pytest.raises(ValueError, match=r"alphas_cumprod: every value must lie in \(0, 1\], found 0.0; 0 is a "
                       "zero-terminal-SNR level"):
        Schedule.from_alphas_cumprod(torch.linspace(1.0, 0.0, 10), [9, 1])
    # a table rising with t (e.g. 1 - alphas_cumprod) ran "sampling" towards more noise, silently
    with pytest.raises(ValueError, match="alphas_cumprod must not increase with the timestep"):
        Schedule.from_alphas_cumprod(1 - scheduler.alphas_cumprod, [751, 501, 251, 1])
    with pytest.raises(ValueError, match="final_alpha_cumprod=0.5 is below"):
        Schedule.from_alphas_cumprod(scheduler.alphas_cumprod, [751, 501, 251, 1], final_alpha_cumprod=0.5)


def test_scheduler_problems():
    with pytest.raises(ValueError, match="call scheduler.set_timesteps"):
        Schedule.from_scheduler(sd_scheduler())
    with pytest.raises(ValueError, match="prediction_type='v_prediction'"):
        Schedule.from_scheduler(sd_scheduler(prediction_type="v_prediction"), 4)
    with pytest.raises(TypeError, match="scheduler must be a Schedule or a diffusers scheduler"):
        ddim_sample(tiny_unet(), object(), noise())
    broken = sd_scheduler(timestep_spacing="trailing")
    broken.set_timesteps(61)  # diffusers emits 62 timesteps ending in -1 here
    with pytest.raises(ValueError, match="timesteps must lie in"):
        Schedule.from_scheduler(broken)


def test_mismatched_pair_and_latents(unet, grid):
    z = noise()
    with pytest.raises(ValueError, match=r"z1 \(2, 4, 4, 4\) and z0 \(2, 4, 8, 8\) must have the same shape"):
        bdia_invert(unet, grid, z, noise((2, 4, 4, 4)), gamma=1.0)
    with pytest.raises(TypeError, match="z1 .* must match in dtype"):
        bdia_invert(unet, grid, z, z.double(), gamma=1.0)
    with pytest.raises(ValueError, match=r"z_T must be \(B, 4, h, w\)"):
        bdia_sample(unet, grid, noise((2, 3, 8, 8)), gamma=1.0)
    with pytest.raises(TypeError, match="z_T is torch.float64 but the eps model's weights are torch.float32"):
        ddim_sample(unet, grid, z.double())
    with pytest.raises(TypeError, match="z0 must be a floating-point tensor"):
        bdia_invert(unet, grid, z.long(), z.long(), gamma=1.0)


def test_non_finite_pair_or_step_noise_is_refused(unet, grid):
    """NaN in ``z1`` of a BDIA pair, inf in one step of the SDE noise (tensor or list): a ValueError naming it."""
    z0, z1 = noise(), noise()
    z1[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"z1: 1 value\(s\) are NaN or infinite"):
        bdia_invert(unet, grid, z0, z1, gamma=0.96)
    xi = torch.randn(grid.num_steps, *z0.shape)
    xi[1, 0, 0, 0, 0] = float("inf")
    for sample in (ei_sample, adjoint_sample):
        for steps_noise in (xi, list(xi)):
            with pytest.raises(ValueError, match=r"noise\[1\]: 1 value\(s\) are NaN or infinite"):
                sample(unet, grid, z0, noise=steps_noise)


def test_conditioning_errors(grid):
    cond_unet = tiny_cond_unet()
    text, empty = text_embeddings(2)
    z = noise()
    with pytest.raises(ValueError, match="encoder_hidden_states is required"):
        ddim_sample(cond_unet, grid, z)
    with pytest.raises(ValueError, match="needs encoder_hidden_states and negative_encoder_hidden_states"):
        ddim_sample(cond_unet, grid, z, encoder_hidden_states=text, guidance_scale=5.0)
    with pytest.raises(TypeError, match="encoder_hidden_states must be a torch.float32 tensor"):
        ddim_sample(cond_unet, grid, z, encoder_hidden_states=text.double())
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(B or 1, L, D\) with B=2"):
        ddim_sample(cond_unet, grid, z, encoder_hidden_states=text[:, :, 0])
    with pytest.raises(ValueError, match="negative_encoder_hidden_states .* differ in"):
        ddim_sample(cond_unet, grid, z, encoder_hidden_states=text, negative_encoder_hidden_states=empty[:, :2],
                    guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        ddim_sample(cond_unet, grid, z, encoder_hidden_states=text, guidance_scale=float("inf"))
    with pytest.raises(ValueError, match="UNet2DModel takes no text conditioning"):
        ddim_sample(tiny_unet(), grid, z, encoder_hidden_states=text)
    with pytest.raises(TypeError, match="model must be a diffusers UNet or a callable"):
        ddim_sample(42, grid, z)


def test_pipeline_arguments(unet, grid):
    vae = LinearPatchVae().pair
    images = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match="method must be one of"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, method="lbfgs")
    with pytest.raises(ValueError, match="diffusion must be one of"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, diffusion="dpm")
    with pytest.raises(ValueError, match="gamma must lie in"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, gamma=0.0)
    with pytest.raises(ValueError, match="gamma is BDIA's; diffusion='ddim' takes none, got gamma=0.5"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, diffusion="ddim", gamma=0.5)  # was ignored
    with pytest.raises(TypeError, match="cond must be a dict of the eps model's keyword arguments .* got list"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, cond=[1, 2])
    with pytest.raises(TypeError, match=r"option\(s\) \['steps'\] do not apply to method='encoder'"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, method="encoder", steps=5)
    with pytest.raises(ValueError, match=r"true_z0 must be a float tensor of the latents' shape \(2, \?, \?, \?\)"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, method="encoder", true_z0=noise((3, 4, 8, 8)))
    with pytest.raises(ValueError, match=r"true_zT must be a float tensor of the latents' shape \(2, 4, 8, 8\)"):
        decinv_fast.invert_to_noise(vae, unet, grid, images, method="encoder", true_zT=noise((2, 4, 4, 4)))


def test_pipeline_refuses_before_the_decoder_stage(unet, grid):
    """A gamma BDIA cannot invert with, or a video, is refused before any decoder pass (which may be long)."""
    calls, patch = [], LinearPatchVae()
    vae = (lambda x: calls.append("E") or patch.encode(x), lambda z: calls.append("D") or patch.decode(z))
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\] for inversion"):
        decinv_fast.invert_to_noise(vae, unet, grid, torch.zeros(2, 3, 64, 64), gamma=0.0)
    with pytest.raises(ValueError, match=r"images: videos are not supported here, got 1 video\(s\) of 2 frames"):
        decinv_fast.invert_to_noise(vae, unet, grid, torch.zeros(1, 2, 3, 64, 64), method="encoder")
    assert calls == []


def test_a_noise_table_rising_between_any_two_timesteps_is_refused():
    """Every pair of neighbouring timesteps is checked: the two nearest the clean end, and a two-step grid."""
    table = sd_scheduler().alphas_cumprod.clone()
    table[251] = 0.9995  # above alphabar at t=1 (0.998): less noise at t=251 than at t=1, the rest in order
    with pytest.raises(ValueError, match=r"must not increase with the timestep.*0\.9995 at t=251 > .* at t=1$"):
        Schedule.from_alphas_cumprod(table, [751, 501, 251, 1])
    with pytest.raises(ValueError, match="alphas_cumprod must not increase with the timestep"):
        Schedule.from_alphas_cumprod(1 - sd_scheduler().alphas_cumprod, [501, 1])


def _nan_below_300(z, t):
    """An eps model that goes non-finite at low noise (as an fp16 UNet can overflow)."""
    return torch.full_like(z, float("nan")) if t < 300 else torch.tanh(z)


@pytest.mark.parametrize("run", [
    lambda g: ddim_sample(_nan_below_300, g, noise()),
    lambda g: ddim_invert(_nan_below_300, g, noise()),
    lambda g: bdia_sample(_nan_below_300, g, noise(), gamma=0.96),
    lambda g: bdia_invert(_nan_below_300, g, noise(), noise(seed=2), gamma=0.96),
    lambda g: bdia_invert_from_z0(_nan_below_300, g, noise(), gamma=0.96),
    lambda g: ei_sample(_nan_below_300, g, noise(), order=2),
    lambda g: adjoint_sample(_nan_below_300, g, noise()),
])
def test_a_pass_that_goes_non_finite_is_an_error(grid, run):
    """NaN/inf from the eps model (or an overflow) is a FloatingPointError naming the pass, not a NaN result."""
    with pytest.raises(FloatingPointError, match=r"NaN/inf .*eps model"):
        run(grid)


@pytest.mark.parametrize("sample, name", [
    (lambda g, eps: ddim_sample(eps, g, noise()), "ddim_sample"),
    (lambda g, eps: bdia_sample(eps, g, noise(), gamma=0.0), "bdia_sample"),
    (lambda g, eps: bdia_invert(eps, g, noise(), noise(seed=2), gamma=0.96), "bdia_invert"),
    (lambda g, eps: bdia_invert_from_z0(eps, g, noise(), gamma=0.96), "bdia_invert_from_z0"),
])
def test_the_non_finite_error_names_the_sampler_that_was_called(grid, sample, name):
    """ddim_sample runs bdia_sample's loop at gamma = 0, but its error still names ddim_sample."""
    with pytest.raises(FloatingPointError, match=rf"^{name}: the result has 512 NaN/inf value\(s\) in torch.float32"):
        sample(grid, _nan_below_300)


@pytest.mark.parametrize("value", [1.5, 1.0000001, 0.0, -0.2, float("nan"), float("inf")])
def test_a_step_with_a_noise_level_outside_zero_one_names_it(value):
    """The low-level steps take alphabar (Python floats) in (0, 1]; outside it (where sqrt gave Python's bare
    "math domain error", 0 a division by zero, NaN a NaN result) the error names the argument and its value."""
    z = torch.zeros(3)
    for name, call in [
        ("alphabar_from", lambda: ddim_step(z, z, value, 0.5)),
        ("alphabar_to", lambda: ddim_coefficients(0.5, value)),
        ("alphabar", lambda: bdia_step(z, z, z, value, 0.7, 0.3, gamma=0.0)),
        ("alphabar_below", lambda: bdia_step(z, z, z, 0.5, value, 0.3, gamma=0.5)),
        ("alphabar_above", lambda: bdia_inverse_step(z, z, z, 0.5, 0.7, value, gamma=0.5)),
    ]:
        with pytest.raises(ValueError, match=rf"^{name} must lie in \(0, 1\] .*, got {re.escape(repr(value))}$"):
            call()
    assert ddim_coefficients(1.0, 0.5)[0] == pytest.approx(0.5 ** 0.5)  # both ends of the range are levels


def test_bad_noise_tables_and_final_levels_are_named():
    """``final_alpha_cumprod`` is a level in (0, 1] like the table's; the table is 1-D."""
    table = sd_scheduler().alphas_cumprod
    for final in (1.5, 0.0, float("nan")):
        with pytest.raises(ValueError, match=r"final_alpha_cumprod: every value must lie in \(0, 1\]"):
            Schedule.from_alphas_cumprod(table, [501, 1], final_alpha_cumprod=final)
    with pytest.raises(ValueError, match=r"alphas_cumprod must be a non-empty 1-D table, got shape \(1000, 1\)"):
        Schedule.from_alphas_cumprod(table[:, None], [501, 1])


def test_a_pair_whose_z1_is_no_tensor_or_a_noise_step_of_another_shape_is_named(unet, grid):
    z = noise()
    with pytest.raises(TypeError, match="^z1 must be a tensor, got list$"):
        bdia_invert(unet, grid, z, [0.0], gamma=1.0)
    steps = [torch.zeros_like(z) for _ in range(grid.num_steps)]
    steps[2] = torch.zeros(1, 4, 8, 8)  # would broadcast
    with pytest.raises(ValueError, match=r"noise\[2\] must be a floating tensor shaped like z \(2, 4, 8, 8\), got"):
        ei_sample(unet, grid, z, noise=steps)


@pytest.mark.parametrize("gamma", [0.0, -0.5, float("nan"), float("inf")])
def test_a_step_with_a_gamma_it_cannot_take_names_it(gamma):
    """The inverse step divides by gamma: 0 gave inf/NaN without a word, as NaN did in the forward step; both
    are errors naming gamma. The forward step takes gamma = 0 (DDIM) and, as plain algebra, a negative one."""
    z = torch.ones(3)
    with pytest.raises(ValueError, match=rf"^gamma must be > 0 and finite \(the inverse step divides by it\), "
                                         rf"got {re.escape(repr(gamma))}$"):
        bdia_inverse_step(z, z, z, 0.5, 0.7, 0.3, gamma=gamma)
    if math.isfinite(gamma):
        assert bool(torch.isfinite(bdia_step(z, z, z, 0.5, 0.7, 0.3, gamma=gamma)).all())
    else:
        with pytest.raises(ValueError, match=rf"^gamma must be a finite number, got {re.escape(repr(gamma))}$"):
            bdia_step(z, z, z, 0.5, 0.7, 0.3, gamma=gamma)


@pytest.fixture
def no_stage(monkeypatch):
    """Either stage starting fails the test: the arguments must be refused before."""
    def stage(*args, **kwargs):
        raise AssertionError("a stage ran before the bad argument was refused")

    for name in ("encode", "invert", "bdia_invert_from_z0", "ddim_invert"):
        monkeypatch.setattr(pipeline, name, stage)


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype="float16"), "dtype must be one of"),
    # the fixture VAE's latents of 64x64 images are (2, 4, 8, 8): known before anything runs
    (dict(true_zT=torch.ones(2, 4, 4, 4)), r"true_zT must be a float tensor of the latents' shape \(2, 4, 8, 8\), "
                                            r"got \(2, 4, 4, 4\)"),
    (dict(true_z0=torch.ones(2, 4, 8, 8, dtype=torch.int64)), "true_z0 must be a float tensor"),
    (dict(true_z0=torch.full((2, 4, 8, 8), float("nan"))), "true_z0: 512 value[(]s[)] are NaN or infinite"),
    (dict(true_zT=torch.zeros(2, 4, 8, 8)), r"true_zT is all zeros: its NMSE is normalised by \|\|true_zT\|\|"),
])
def test_bad_arguments_are_refused_before_the_stages(unet, grid, no_stage, kwargs, message):
    vae = decinv_fast.load_fixture_vae()
    with pytest.raises((ValueError, TypeError), match=message):
        decinv_fast.invert_to_noise(vae, unet, grid, torch.zeros(2, 3, 64, 64), method="adam", **kwargs)


def test_a_pair_s_known_answer_is_checked_once_its_latents_are_known(unet, grid):
    """A pair's latent size is unknown until it encodes: the shape is checked then, still naming the argument."""
    vae = LinearPatchVae().pair
    with pytest.raises(ValueError, match=r"true_zT must be a float tensor of the latents' shape \(2, 4, 8, 8\)"):
        decinv_fast.invert_to_noise(vae, unet, grid, torch.zeros(2, 3, 64, 64), method="encoder",
                                    true_zT=noise((2, 4, 4, 4)))


def test_a_mid_grey_batch_has_an_absolute_pixel_residual_not_an_infinite_one(unet, grid):
    vae = decinv_fast.load_fixture_vae()
    grey = torch.zeros(1, 3, 64, 64)  # 0 in [-1, 1]: no norm to divide by
    out = decinv_fast.invert_to_noise(vae, unet, grid, grey, method="encoder")
    expected = float(decinv_fast.decode(vae, out.z0).float().norm())
    assert out.pixel_residual == pytest.approx(expected, rel=1e-6) and 0 < out.pixel_residual < float("inf")


def test_a_0_d_tensor_noise_level_is_taken_and_out_of_range_named_without_a_tensor_hint():
    """The one-step functions take a 0-d tensor level as its number; out of range, the error is about the value."""
    from decinv_fast.diffusion.steps import ddim_step

    z = torch.zeros(1, 4, 2, 2)
    assert torch.equal(ddim_step(z, z, torch.tensor(0.5), 0.6), ddim_step(z, z, 0.5, 0.6))
    with pytest.raises(ValueError, match=r"^alphabar_from must lie in \(0, 1\] .*got tensor\(1.5000\)$"):
        ddim_step(z, z, torch.tensor(1.5), 0.6)
