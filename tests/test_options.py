"""What ``options.py`` settles before a run: each method's options and default step size, which latents
keep a fp32 master, the ranges the options accept, and the Python numbers they come back as."""

import numpy as np
import pytest
import torch

import decinv_fast
from decinv_fast.options import auto_kwargs, check_options, keeps_fp32_master

# the options each method refuses, spelled out as invert's docstring lists the ones it takes
FOREIGN = {
    "adam": ("rho", "alpha", "memory", "mixing", "safeguard", "mean_gain", "optimizer"),
    "fsm": ("alpha", "memory", "mixing", "safeguard", "eps", "betas", "optimizer"),
    "km": ("memory", "mixing", "safeguard", "eps", "betas", "optimizer"),
    "grad": ("rho", "alpha", "mixing", "safeguard", "residual_blur", "mean_gain", "eps", "betas"),
    "anderson": ("alpha", "eps", "betas", "optimizer"),
}


@pytest.mark.parametrize("method", sorted(FOREIGN))
def test_each_method_refuses_the_options_it_does_not_use(method):
    for name in FOREIGN[method]:
        with pytest.raises(TypeError, match=rf"unknown option\(s\) \['{name}'\] for method='{method}'"):
            check_options(method, None, {name: 1})


def test_default_step_sizes_are_the_documented_ones():
    """``lr=None``: 0.01 for adam and grad, 1.0 for fsm, km and anderson (invert's docstring)."""
    defaults = {method: check_options(method, None, {})[0] for method in ("adam", "grad", "fsm", "km", "anderson")}
    assert defaults == {"adam": 0.01, "grad": 0.01, "fsm": 1.0, "km": 1.0, "anderson": 1.0}


def test_only_half_precision_latents_keep_a_fp32_master():
    """``None`` means fp16 only; ``True`` asks for one, but fp32 and fp64 latents never get a (lossy for
    fp64) fp32 copy."""
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    kept = [(dtype, wanted) for dtype in dtypes for wanted in (None, True, False) if keeps_fp32_master(dtype, wanted)]
    assert kept == [(torch.float16, None), (torch.float16, True), (torch.bfloat16, True)]


def test_grad_takes_fp32_master_false():
    """Only ``fp32_master=True`` is refused for grad (it keeps no master copy); ``False`` says the same."""
    codec = (lambda x: x.clone(), lambda z: 0.9 * z)
    x = torch.linspace(-0.5, 0.5, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    plain = decinv_fast.invert(codec, x, method="grad", steps=2)
    assert torch.equal(decinv_fast.invert(codec, x, method="grad", steps=2, fp32_master=False).latents, plain.latents)


def test_auto_names_the_options_it_refuses_and_the_anderson_run_that_takes_them(tiny_kl, images_32):
    with pytest.raises(ValueError) as refused:
        decinv_fast.invert(tiny_kl, images_32, method="auto", steps=2, lr=0.5, memory=3)
    assert "(got lr=0.5, memory=3)" in str(refused.value)
    assert "invert(vae, images, **decinv_fast.options.auto_kwargs(lr=0.5, memory=3))" in str(refused.value)
    with pytest.raises(ValueError, match="to change them, run the anderson method it is"):
        decinv_fast.invert(tiny_kl, images_32, method="auto", steps=2, keep_best=False)
    # the hinted call runs: spelled out unchanged it is auto, and it takes any of auto's settings
    auto = decinv_fast.invert(tiny_kl, images_32, method="auto", steps=3)
    assert torch.equal(decinv_fast.invert(tiny_kl, images_32, steps=3, **auto_kwargs()).latents, auto.latents)
    changed = decinv_fast.invert(tiny_kl, images_32, steps=3, **auto_kwargs(lr=0.5, memory=3, patience=1))
    assert (changed.lr, changed.patience) == (0.5, 1)
    last = dict(keep_best=False, patience=None)  # the last iterates, which the step size moves
    assert not torch.equal(decinv_fast.invert(tiny_kl, images_32, steps=3, **auto_kwargs(lr=0.5, **last)).latents,
                           decinv_fast.invert(tiny_kl, images_32, steps=3, **auto_kwargs(**last)).latents)
    with pytest.raises(ValueError, match="takes no method"):
        auto_kwargs(method="fsm")


def test_km_without_inertia_is_the_forward_step():
    """alpha lies in [0, 1): alpha = 0 is accepted, and KM without its inertial term is FSM."""
    codec = (lambda x: x.clone(), lambda z: 0.8 * z + 0.1 * z.roll(1, dims=-1))
    x = torch.linspace(-0.7, 0.7, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    run = dict(lr=0.9, steps=4, schedule="constant")
    km = decinv_fast.invert(codec, x, method="km", alpha=0.0, **run)
    torch.testing.assert_close(km.latents, decinv_fast.invert(codec, x, method="fsm", **run).latents)


@pytest.mark.parametrize("betas", [(0.9, 1.0), (1.0, 0.999), (-0.1, 0.999)])
def test_betas_lie_in_zero_to_one_excluded(betas):
    """A beta of 1 makes Adam's bias correction ``1 - beta**k`` zero (0/0 moments)."""
    with pytest.raises(ValueError, match=r"betas must be a pair \(beta1, beta2\) of numbers in \[0, 1\)"):
        check_options("adam", None, {"betas": betas})


def test_options_come_back_as_python_numbers():
    """NumPy scalars are accepted and handed on as the Python int and floats the run expects."""
    lr, options = check_options("anderson", np.float32(0.5),
                                {"memory": np.int32(2), "residual_blur": np.float64(1), "mean_gain": np.float32(2)})
    assert (lr, options) == (0.5, {"memory": 2, "residual_blur": 1.0, "mean_gain": 2.0})
    assert [type(v) for v in (lr, options["memory"], options["residual_blur"], options["mean_gain"])] == [
        float, int, float, float]
