"""More bad input to the diffusion module: clear errors naming the argument, before any model call; no silent NaN,
no aliasing of the caller's tensors, compact result reprs."""

from __future__ import annotations

import pytest
import torch
from diffusion_models import noise, sd_scheduler, text_embeddings, tiny_cond_unet, tiny_unet

from decinv_fast.diffusion import (
    Schedule,
    adjoint_gradients,
    adjoint_sample,
    bdia_inverse_step,
    bdia_invert,
    bdia_invert_from_z0,
    bdia_sample,
    bdia_step,
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ei_sample,
    optimize_noise,
    reversible_bdia_sample,
    unrolled_bdia_sample,
)

METHODS = ("adjoint", "reversible", "autograd")


class Counting:
    """A callable eps model ``0.1 z`` (plus ``mean`` if given) that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, z, t, mean=None, **cond):
        self.calls += 1
        return 0.1 * z if mean is None else 0.1 * z + mean


@pytest.fixture(scope="module")
def grid():
    return Schedule.from_scheduler(sd_scheduler(), 3)


@pytest.fixture(scope="module")
def one_step():
    return Schedule.from_scheduler(sd_scheduler(), 1)


def mean_loss(z0):
    return z0.mean()


@pytest.mark.parametrize("method", METHODS)
def test_a_non_finite_final_loss_is_an_error(grid, method):
    """The loss after the last step was appended as NaN (and passed to callback) without a word."""
    seen = []
    with pytest.raises(FloatingPointError, match=r"^optimize_noise: the loss is nan after the last step"):
        optimize_noise(lambda z, t: z * 0.1, grid, torch.zeros(1, 4, 8, 8), lambda z0: torch.sqrt(0.01 - z0.mean()),
                       method=method, iterations=1, lr=1.0, callback=lambda i, value: seen.append((i, value)))
    assert len(seen) == 1 and seen[0][0] == 0 and seen[0][1] == pytest.approx(0.1)  # no (1, nan)


def _runs(grid, model, z, **kw):
    return {
        "ddim_sample": lambda: ddim_sample(model, grid, z, **kw),
        "ddim_invert": lambda: ddim_invert(model, grid, z, **kw),
        "bdia_sample": lambda: bdia_sample(model, grid, z, gamma=0.9, **kw),
        "bdia_invert": lambda: bdia_invert(model, grid, z, z, gamma=0.9, **kw),
        "bdia_invert_from_z0": lambda: bdia_invert_from_z0(model, grid, z, gamma=0.9, **kw),
        "ei_sample": lambda: ei_sample(model, grid, z, **kw),
    }


@pytest.mark.parametrize("run", ["ddim_sample", "ddim_invert", "bdia_sample", "bdia_invert", "bdia_invert_from_z0",
                                 "ei_sample", "adjoint_sample", "adjoint_gradients", "reversible_bdia_sample",
                                 "unrolled_bdia_sample", "optimize_noise"])
def test_an_empty_batch_is_named_before_any_model_call(grid, run):
    """An empty batch failed inside diffusers ("cannot reshape tensor of 0 elements"); a callable ran on it."""
    model, z = Counting(), noise()[:0]
    runs = {**_runs(grid, model, z),
            "adjoint_sample": lambda: adjoint_sample(model, grid, z),
            "adjoint_gradients": lambda: adjoint_gradients(model, grid, z, mean_loss),
            "reversible_bdia_sample": lambda: reversible_bdia_sample(model, grid, z, gamma=0.9),
            "unrolled_bdia_sample": lambda: unrolled_bdia_sample(model, grid, z, gamma=0.9),
            "optimize_noise": lambda: optimize_noise(model, grid, z, mean_loss, iterations=1)}
    with pytest.raises(ValueError, match=r"^z_?[0T]: empty batch \(shape \(0, 4, 8, 8\)\)"):
        runs[run]()
    assert model.calls == 0
    with pytest.raises(ValueError, match="^z_T: empty batch"):
        bdia_sample(tiny_unet(), grid, z, gamma=0.9)  # a UNet: no raw diffusers error either


@pytest.mark.parametrize("gamma", [5.0, -2.0, float("nan"), "0.5"])
def test_unrolled_bdia_sample_checks_gamma_as_bdia_sample_does(grid, gamma):
    model = Counting()
    with pytest.raises(ValueError, match=r"^gamma must lie in \[0, 1\]"):
        unrolled_bdia_sample(model, grid, noise(), gamma=gamma)
    assert model.calls == 0


def test_unrolled_bdia_sample_checks_z_T_and_names_itself(grid):
    model = Counting()
    with pytest.raises(TypeError, match="^z_T must be a floating-point tensor, got torch.int64$"):
        unrolled_bdia_sample(model, grid, noise().long(), gamma=0.5)
    bad = noise()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^z_T: 1 value\(s\) are NaN"):
        unrolled_bdia_sample(model, grid, bad, gamma=0.5)
    assert model.calls == 0
    with pytest.raises(FloatingPointError, match="^unrolled_bdia_sample: the result has"):
        unrolled_bdia_sample(lambda z, t: z * float("nan"), grid, noise(), gamma=0.5)


def test_non_finite_conditioning_is_an_input_error_naming_its_key(grid):
    """NaN in a conditioning tensor ran the whole pass, then blamed the eps model."""
    unet, z = tiny_cond_unet(), noise()
    text, empty = text_embeddings(2)
    for key in ("encoder_hidden_states", "negative_encoder_hidden_states"):
        cond = dict(encoder_hidden_states=text.clone(), negative_encoder_hidden_states=empty.clone())
        cond[key][0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match=rf"^{key}: 1 value\(s\) are NaN or infinite$"):
            ddim_sample(unet, grid, z, guidance_scale=7.5, **cond)
    model, mean = Counting(), torch.zeros(2, 4, 8, 8)
    mean[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"^mean: 1 value\(s\)"):
        bdia_sample(model, grid, z, gamma=0.9, mean=mean)
    extra = {"text_embeds": torch.full((2, 8), float("nan"))}
    with pytest.raises(ValueError, match=r"^added_cond_kwargs\['text_embeds'\]: 16 value\(s\)"):
        ei_sample(model, grid, z, added_cond_kwargs=extra)
    assert model.calls == 0


def test_an_embedding_of_the_wrong_width_is_named(grid):
    """A width other than the UNet's cross_attention_dim gave torch's raw matmul error."""
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(B or 1, L, 8\) for this UNet .*"
                                         r"got shape \(2, 5, 7\)"):
        ddim_sample(tiny_cond_unet(), grid, noise(), encoder_hidden_states=torch.randn(2, 5, 7))


@pytest.mark.parametrize("config, width, key", [
    (dict(cross_attention_dim=(8, 8)), 8, "cross_attention_dim"),  # per-block widths, one shared
    (dict(cross_attention_dim=8, encoder_hid_dim=6), 6, "encoder_hid_dim"),  # projected from 6 to 8 first
], ids=["per-block", "text_proj"])
def test_the_embedding_width_of_per_block_and_projecting_unets_is_named(grid, config, width, key):
    """These UNets gave torch's raw matmul error for a wrong width; the right width runs."""
    unet = tiny_cond_unet(**config)
    assert torch.isfinite(ddim_sample(unet, grid, noise(), encoder_hidden_states=torch.randn(2, 5, width))).all()
    with pytest.raises(ValueError, match=rf"must be \(B or 1, L, {width}\) for this UNet \(its {key}\), got shape "
                                         rf"\(2, 5, {width + 1}\)$"):
        ddim_sample(unet, grid, noise(), encoder_hidden_states=torch.randn(2, 5, width + 1))


def test_adjoint_gradients_names_an_integer_z_T(grid):
    """requires_grad_ raised "only Tensors of floating point dtype can require gradients"."""
    model = Counting()
    with pytest.raises(TypeError, match="^z_T must be a floating-point tensor, got torch.int64$"):
        adjoint_gradients(model, grid, noise().long(), mean_loss)
    assert model.calls == 0


def test_recorded_noise_of_the_wrong_dtype_says_so(grid):
    z = noise()
    with pytest.raises(ValueError, match=r"^noise\[0\] must be a floating tensor shaped like z \(2, 4, 8, 8\), "
                                         r"got torch.int64, shape \(2, 4, 8, 8\)$"):
        ei_sample(Counting(), grid, z, noise=torch.randn(3, *z.shape).long())


def test_steps_refuse_tensors_that_would_broadcast_and_arguments_that_are_no_numbers():
    z = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"^eps \(3,\) torch.float32 and z \(2, 3\) torch.float32 must have the same"):
        ddim_step(z, z[0], 0.5, 0.6)
    with pytest.raises(ValueError, match=r"^z \(2, 3\) torch.float32 and z_above \(1, 3\) torch.float32 must have"):
        bdia_step(z[:1], z, z, 0.5, 0.6, 0.4, 0.5)
    with pytest.raises(ValueError, match=r"^eps \(2, 3\) torch.float64 and z_below"):
        bdia_inverse_step(z, z, z.double(), 0.5, 0.6, 0.4, gamma=0.5)
    with pytest.raises(TypeError, match="^z must be a tensor, got list$"):
        ddim_step([1.0], z, 0.5, 0.6)
    with pytest.raises(ValueError, match=r"^alphabar_from must lie in \(0, 1\] .*got 'a'$"):
        ddim_step(z, z, "a", 0.6)
    with pytest.raises(ValueError, match=r"^alphabar_below must lie in \(0, 1\] .*got None$"):
        bdia_step(z, z, z, 0.5, None, 0.4, 0.5)
    with pytest.raises(ValueError, match="^gamma must be a finite number, got 'x'$"):
        bdia_step(z, z, z, 0.5, 0.6, 0.4, "x")
    with pytest.raises(ValueError, match=r"^gamma must be > 0 and finite .*, got '1'$"):
        bdia_inverse_step(z, z, z, 0.5, 0.6, 0.4, "1")


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps_offset=-5), "^steps_offset must be an int >= 0, got -5$"),
    (dict(steps_offset=1.5), "^steps_offset must be an int >= 0, got 1.5$"),
    (dict(steps_offset=1000), "^steps_offset=1000 must be below num_train_timesteps=1000$"),
    (dict(num_train_timesteps=10.7), "^num_train_timesteps must be an int >= 1, got 10.7$"),
    (dict(num_train_timesteps=0), "^num_train_timesteps must be an int >= 1, got 0$"),
])
def test_ddim_timesteps_refuses_offsets_and_lengths_it_truncated_or_ran_below_zero(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_timesteps(5, **kwargs)
    assert ddim_timesteps(5, steps_offset=1) == [801, 601, 401, 201, 1]


@pytest.mark.parametrize("run", ["ddim_sample", "ddim_invert", "bdia_sample", "bdia_invert", "bdia_invert_from_z0",
                                 "ei_sample", "optimize_noise"])
def test_a_callback_that_is_not_callable_is_named_before_any_model_call(grid, run):
    model = Counting()
    runs = {**_runs(grid, model, noise(), callback=5),
            "optimize_noise": lambda: optimize_noise(model, grid, noise(), mean_loss, iterations=1, callback=5)}
    with pytest.raises(TypeError, match="^callback must be a callable or None, got int$"):
        runs[run]()
    assert model.calls == 0


@pytest.mark.parametrize("optimize", [5, None, ("z_T", 3)])
def test_optimize_that_is_no_name_or_sequence_of_names_is_named(grid, optimize):
    with pytest.raises(TypeError, match="^optimize must be 'z_T', a conditioning keyword or a sequence of them"):
        optimize_noise(Counting(), grid, noise(), mean_loss, optimize=optimize)


def test_params_that_are_not_iterable_are_named(grid):
    for run in (lambda: adjoint_sample(Counting(), grid, noise(), params=5),
                lambda: reversible_bdia_sample(Counting(), grid, noise(), gamma=0.9, params=5),
                lambda: adjoint_gradients(Counting(), grid, noise(), mean_loss, params=5)):
        with pytest.raises(TypeError, match="^params must be None, a tensor or an iterable of tensors .* got int$"):
            run()


def test_an_eps_model_returning_no_tensor_is_named(grid):
    with pytest.raises(TypeError, match=r"^the eps model returned float, not a tensor shaped like z \(2, 4, 8, 8\)"):
        ddim_sample(lambda z, t: 1.0, grid, noise())
    z = noise()
    assert torch.equal(ddim_sample(lambda z, t: (0.1 * z,), grid, z), ddim_sample(lambda z, t: 0.1 * z, grid, z))


def test_optimize_noise_says_which_dtype_and_shape_were_wrong(grid):
    with pytest.raises(TypeError, match="^z_T must be a floating-point tensor, got torch.int64$"):
        optimize_noise(Counting(), grid, noise().long(), mean_loss, iterations=1)
    with pytest.raises(ValueError, match=r"^loss must return a scalar tensor, got shape \(2, 4, 8, 8\)$"):
        optimize_noise(Counting(), grid, noise(), lambda z0: z0, iterations=1)


@pytest.mark.parametrize("method, options", [
    ("autograd", dict(order=5, states="nonsense")), ("autograd", dict(gamma=0.5)), ("reversible", dict(order=2)),
    ("adjoint", dict(gamma=0.9)),
])
def test_optimize_noise_refuses_sampler_options_its_method_does_not_use(grid, method, options):
    with pytest.raises(TypeError, match=rf"^option\(s\) {sorted(options)!r} are not used by method={method!r}".replace(
            "[", r"\[").replace("]", r"\]")):
        optimize_noise(Counting(), grid, noise(), mean_loss, method=method, iterations=1, **options)


def test_optimize_noise_keep_norm_must_be_a_flag(grid):
    """A string such as "no" silently meant on."""
    model = Counting()
    with pytest.raises(ValueError, match="^keep_norm must be True or False, got 'no'$"):
        optimize_noise(model, grid, noise(), mean_loss, iterations=1, keep_norm="no")
    assert model.calls == 0


def test_optimize_noise_refuses_a_name_given_twice(grid):
    mean = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"^optimize names \['mean'\] more than once"):
        optimize_noise(Counting(), grid, noise(), mean_loss, optimize=("mean", "mean"), iterations=1, mean=mean)


def test_one_step_results_are_new_tensors_not_the_callers(one_step):
    """On a one-step grid bdia_sample's z1 was the caller's z_T object (and bdia_invert's result the caller's z1)."""
    z = noise()
    pair = bdia_sample(Counting(), one_step, z, gamma=0.5)
    assert pair.z1 is not z and torch.equal(pair.z1, z)
    pair.z1.add_(1.0)
    assert torch.equal(z, noise())  # writing into the result leaves the input alone
    z1 = noise(seed=2)
    z_T = bdia_invert(Counting(), one_step, z, z1, gamma=0.5)
    assert z_T is not z1 and torch.equal(z_T, z1)
    unrolled = unrolled_bdia_sample(Counting(), one_step, z, gamma=0.5)
    assert unrolled.z1 is not z and torch.equal(unrolled.z1, z)


def test_result_reprs_are_one_line_without_values(grid):
    unet, z, (text, _) = tiny_cond_unet(), noise(), text_embeddings(2)
    result = optimize_noise(unet, grid, z, mean_loss, iterations=1, optimize=("z_T", "encoder_hidden_states"),
                            encoder_hidden_states=text)
    grads = adjoint_gradients(unet, grid, z, mean_loss, grad_cond=("encoder_hidden_states",),
                              encoder_hidden_states=text)
    for text_repr, name in ((repr(result), "NoiseOptimization"), (repr(grads), "AdjointGradients")):
        assert text_repr.startswith(f"{name}(") and "\n" not in text_repr and len(text_repr) < 250
        assert "tensor(" not in text_repr and "z_T (2, 4, 8, 8) float32" in text_repr
        assert "'encoder_hidden_states': (2, 5, 8) float32" in text_repr
    assert f"final_loss={result.losses[-1]:.4g}" in repr(result) and "method='adjoint'" in repr(result)
    assert f"model_calls={grads.model_calls}" in repr(grads)


@pytest.mark.parametrize("sample", [
    lambda grid, z: reversible_bdia_sample(Counting(), grid, z, gamma=0.9).z0,
    lambda grid, z: adjoint_sample(Counting(), grid, z),
])
def test_double_backward_is_refused_in_words(grid, sample):
    """It failed later with torch's "element 0 of tensors does not require grad"."""
    z = noise().requires_grad_(True)
    out = sample(grid, z)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True through it\) is not supported"):
        torch.autograd.grad(out.square().sum(), z, create_graph=True)
    (grad,) = torch.autograd.grad(sample(grid, z).square().sum(), z)  # one backward still works
    assert grad.shape == z.shape and bool(torch.isfinite(grad).all())


def test_a_scheduler_without_timesteps_says_how_to_give_them():
    """The samplers take no num_inference_steps (given, it went on to the model): the error says what they take."""
    from decinv_fast.diffusion import ddim_sample

    with pytest.raises(ValueError, match=r"set_timesteps\(n\) first, or give the step count: "
                                         r"Schedule.from_scheduler\(scheduler, n\) for the samplers"):
        ddim_sample(tiny_unet(), sd_scheduler(), noise())


def test_a_tensor_given_for_a_number_says_to_pass_a_python_number():
    """gamma = torch.tensor(0.5) lies in [0, 1]: refused for being a tensor, which the error now says."""
    from decinv_fast.diffusion import bdia_sample

    grid = Schedule.from_scheduler(sd_scheduler(), 2)
    with pytest.raises(ValueError, match=r"^gamma must .* got tensor\(0.5000\) \(a tensor: pass a Python number"):
        bdia_sample(tiny_unet(), grid, noise(), gamma=torch.tensor(0.5))
