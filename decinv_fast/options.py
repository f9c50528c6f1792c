"""Validation of ``invert``'s method, step size and method options (clear errors naming the argument)."""

from __future__ import annotations

import math
import numbers
import os
import sys

import numpy as np
import torch

METHODS = ("adam", "fsm", "km", "grad", "anderson", "auto")
DEFAULT_LR = {"adam": 0.01, "fsm": 1.0, "km": 1.0, "grad": 0.01, "anderson": 1.0}
# first_frame.py's step counts (its first_frame_gain: a gain)
FIRST_FRAME = ("first_frame_steps", "first_frame_join", "second_frame_steps")
METHOD_OPTIONS = {
    "adam": {"eps", "betas", "residual_blur", "clip_aware", *FIRST_FRAME},
    "fsm": {"rho", "residual_blur", "mean_gain", "mean_gain_clipped", "clip_aware", *FIRST_FRAME, "first_frame_gain"},
    "km": {"rho", "alpha", "residual_blur", "mean_gain", "mean_gain_clipped", "clip_aware", *FIRST_FRAME,
           "first_frame_gain"},
    "grad": {"clip_aware", "optimizer", "memory"},
    "anderson": {"rho", "memory", "mixing", "safeguard", "frame_weights", "residual_blur", "mean_gain",
                 "mean_gain_clipped", "clip_aware", *FIRST_FRAME, "first_frame_gain"},
    "auto": set(),
}
AUTO_STEP = ("fsm", "km", "anderson")  # methods that accept lr="auto"
ANDERSON_MIXING = ("latent", "pixel")  # what Anderson's mixing weights minimise (anderson.py)
GRAD_OPTIMIZERS = ("adam", "lbfgs")  # grad's optimizer: the paper's Adam, or L-BFGS (lbfgs.py)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# a method option's value where the caller leaves it out (eps and betas: reference.py's Adam)
OPTION_DEFAULTS = {"alpha": 0.5, "memory": 5, "mixing": "latent", "safeguard": True, "frame_weights": False,
                   "residual_blur": 0.0, "mean_gain": 1.0, "mean_gain_clipped": None, "clip_aware": False,
                   "optimizer": "adam", "first_frame_steps": 0, "first_frame_join": 0,
                   "first_frame_gain": None, "second_frame_steps": 0}

# method="auto": the combination with the best NMSE summed over both VAEs of benchmarks/stopping.py
# at a 10- and a 30-step cap, among those tried (see the README): Anderson mixing over the last 5
# points fitted to the pixel residual, no safeguard, rho 0.7, the encoder shown the residual
# low-passed with a Gaussian of 1 pixel (filters.py), constant schedule, returning each sample's best
# evaluated point (which is what guards against a bad mixed step) and stopping a sample after 3
# steps without improvement. The step's per-channel mean is tripled (accelerated.py): the gain with
# the best NMSE summed over benchmarks/mean_gain.py (both VAEs, 64/128/256 px crops, both caps),
# except for images with at least 0.1 % of their values at +-1 (clipping.CLIPPED_SHARE), whose gain
# stays 1: on those the gain did not pay (benchmarks/stopping.py, the series auto-gain3-everywhere).
# Pixels the image holds at +-1 are taken as clipped by the pipeline that saved it (clipping.py).
# A video's mixing weights are fitted per latent frame (anderson.py; chosen on the fixture video VAE,
# benchmarks/video_vaes.py, the series auto-sample-weights: one set per video); images have one frame. For a
# video VAE whose first latent frame is a problem of its own (adapters: first_frame_alone), 18 steps on the
# first frames alone (at a mean gain of 1.5) start the whole run there, and 3 steps on the frames of its first two
# latent frames from E(x) give it its second latent frame (first_frame.py; the series auto-first-frame-start,
# auto-first-frame-join, auto-first-frame-together and auto-second-frame-together).
AUTO = dict(method="anderson", lr=0.7, schedule="constant", keep_best=True, patience=3,
            options={"memory": 5, "mixing": "pixel", "safeguard": False, "frame_weights": True, "residual_blur": 1.0,
                     "mean_gain": 3.0, "mean_gain_clipped": 1.0, "clip_aware": True, "first_frame_steps": 18,
                     "first_frame_join": 0, "first_frame_gain": 1.5, "second_frame_steps": 3})


def auto_kwargs(**overrides) -> dict:
    """``invert`` keyword arguments spelling out ``method="auto"`` as the ``anderson`` run it is, with
    some of its settings replaced: ``lr``, ``schedule``, ``keep_best``, ``patience`` or a method option
    (``invert(vae, images, **auto_kwargs(memory=8))``; what benchmarks and tests vary against ``auto``)."""
    spelled = dict(method=AUTO["method"], lr=AUTO["lr"], schedule=AUTO["schedule"], keep_best=AUTO["keep_best"],
                   patience=AUTO["patience"], **AUTO["options"])
    if "method" in overrides:
        raise ValueError("auto_kwargs spells out method='auto' as its anderson run; it takes no method")
    return dict(spelled, **overrides)


def auto_overrides(lr=None, schedule=None, keep_best=None, options: dict | None = None) -> dict:
    """What a call with ``method="auto"`` sets that ``auto`` does not take: any ``lr`` or method option, and a
    ``schedule`` or ``keep_best`` other than its own (``None`` for each leaves it to ``auto``). In that order,
    the options as given; empty when ``auto`` runs as it is."""
    refused = {} if lr is None else {"lr": lr}
    for name, value in (("schedule", schedule), ("keep_best", keep_best)):
        if value not in (None, AUTO[name]):
            refused[name] = value
    return dict(refused, **(options or {}))


def is_int(value) -> bool:
    """An integer of any kind (Python, NumPy, ...), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite real number of any kind (Python, NumPy, ...), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the torch-side update math runs in for latents of ``dtype`` (Anderson, the secant step,
    the gain, L-BFGS, the pixel residual they keep): fp32, or fp64 for fp64 latents."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def keeps_fp32_master(dtype: torch.dtype, fp32_master: bool | None) -> bool:
    """Whether a gradient-free run with latents of ``dtype`` keeps a fp32 master copy of its iterate
    (``invert``'s ``fp32_master``; ``None``: for fp16 only): only fp16 and bf16 latents have one."""
    wanted = dtype == torch.float16 if fp32_master is None else fp32_master
    return bool(wanted) and dtype in (torch.float16, torch.bfloat16)


def check_finite(name: str, values, unit: str = "value(s)") -> None:
    """A ValueError naming ``name`` if the tensor (or NumPy array) ``values`` holds NaN or inf."""
    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values)).sum())
    else:  # NumPy's own test: a flipped view's negative strides are no torch tensor
        bad = int((~np.isfinite(np.asarray(values))).sum())
    if bad:
        raise ValueError(f"{name}: {bad} {unit} are NaN or infinite")


def check_dtype(dtype) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or None (the VAE's), got {dtype!r}")


def check_flag(name: str, value) -> None:
    """An on/off argument must be a bool: a string such as "no" would silently mean on."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_compile(compile) -> None:
    """``compile``: a bool, or the name of a ``torch.compile`` backend."""
    if isinstance(compile, str):
        import torch._dynamo

        if compile not in torch._dynamo.list_backends(exclude_tags=()):  # debug ones (aot_eager, ...) too
            usual = torch._dynamo.list_backends()  # the message lists those meant for use
            raise ValueError(f"compile must be True, False or a torch.compile backend {usual}, got {compile!r}")
    elif not isinstance(compile, bool):
        raise ValueError(f"compile must be True, False or a torch.compile backend name, got {compile!r}")


def check_fp32_master(fp32_master, method: str) -> None:
    """``fp32_master``: None or a bool, and not ``True`` for ``grad`` (``invert`` and ``plan`` alike)."""
    if fp32_master is not None:
        check_flag("fp32_master", fp32_master)
    if fp32_master and method == "grad":
        raise ValueError("fp32_master=True is an option of the gradient-free methods; method='grad' keeps no "
                         "master copy (its optimizer state is in the latents' dtype, fp32 for L-BFGS)")


def check_positive(name: str, value) -> None:
    if not is_real(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}{tensor_hint(value)}")


def check_int(name: str, value, low: int) -> None:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}{tensor_hint(value)}")


def tensor_hint(value) -> str:
    """Why a tensor holding a fitting number is refused: the options are Python (or NumPy) numbers."""
    return " (a tensor: pass a Python number, e.g. .item())" if isinstance(value, torch.Tensor) else ""


def mean_gains(options: dict) -> tuple[float, float]:
    """``(mean_gain, mean_gain_clipped)``: the gain on the step's per-channel mean for an image, and for an image
    with at least ``clipping.CLIPPED_SHARE`` of its values at +-1 (the first, unless given)."""
    gain = option(options, "mean_gain")
    clipped = option(options, "mean_gain_clipped")
    return gain, gain if clipped is None else clipped


def uses_torch_update(method: str, options: dict) -> bool:
    """Whether the run's update is ``accelerated.py``'s torch code rather than a fused kernel: Anderson,
    the secant step size, and a mean gain other than 1 (each needs a per-sample reduction first)."""
    return method == "anderson" or bool(options.get("auto_rho")) or mean_gains(options) != (1.0, 1.0)


def fused_update(method: str, options: dict) -> bool:
    """Whether the run's update is a fused op (adam, fsm, km at a fixed step size, gain 1), whose
    backend ``backend`` picks; grad and the torch-update methods update with torch ops."""
    return method != "grad" and not uses_torch_update(method, options)


def option(options: dict, name: str):
    """``options[name]``, or its default (``OPTION_DEFAULTS``)."""
    return options.get(name, OPTION_DEFAULTS[name])


def check_options(method: str, lr, options: dict) -> tuple[float, dict]:
    """``(step size, options)`` after validation; ``lr="auto"`` becomes ``options["auto_rho"]``."""
    unknown = set(options) - METHOD_OPTIONS[method]
    if unknown:
        allowed = sorted(METHOD_OPTIONS[method]) or "none"
        raise TypeError(f"unknown option(s) {sorted(unknown)} for method={method!r}; allowed: {allowed}")
    options = dict(options)
    if "rho" in options:
        if lr is not None:
            raise ValueError(f"give either lr or rho for method={method!r}, not both (they are the same step size)")
        lr = options.pop("rho")
    lr = DEFAULT_LR[method] if lr is None else lr
    if lr == "auto":
        if method not in AUTO_STEP:
            raise ValueError(f"lr='auto' (rho='auto') is for methods {AUTO_STEP}, not {method!r}")
        options["auto_rho"] = True
        lr = 1.0
    check_positive("lr (rho)" if method in ("fsm", "km", "anderson") else "lr", lr)
    if "alpha" in options and not (is_real(options["alpha"]) and 0 <= options["alpha"] < 1):
        raise ValueError(f"alpha (KM inertia) must be a number in [0, 1), got {options['alpha']!r}")
    if option(options, "optimizer") not in GRAD_OPTIMIZERS:
        raise ValueError(f"optimizer (grad) must be one of {GRAD_OPTIMIZERS}, got {options['optimizer']!r}")
    if "memory" in options:
        lbfgs = method == "grad"
        if lbfgs and option(options, "optimizer") != "lbfgs":
            raise ValueError("memory is an option of grad's optimizer='lbfgs' (the number of (s, y) pairs), "
                             "not of its Adam")
        check_int("memory (L-BFGS pairs)" if lbfgs else "memory (Anderson history m)", options["memory"],
                  1 if lbfgs else 0)
        options["memory"] = int(options["memory"])
    if option(options, "mixing") not in ANDERSON_MIXING:
        raise ValueError(f"mixing (Anderson) must be one of {ANDERSON_MIXING}, got {options['mixing']!r}")
    for flag in ("safeguard", "frame_weights", "clip_aware"):
        check_flag(flag, option(options, flag))
    for name in FIRST_FRAME:
        if name in options:
            check_int(name, options[name], 0)
            options[name] = int(options[name])
    blur = option(options, "residual_blur")
    if not is_real(blur) or blur < 0:
        raise ValueError(f"residual_blur (Gaussian sigma in pixels) must be a finite number >= 0, got {blur!r}"
                         f"{tensor_hint(blur)}")
    if "residual_blur" in options:
        options["residual_blur"] = float(blur)
    for name in ("mean_gain", "mean_gain_clipped", "first_frame_gain"):
        if options.get(name) is not None:
            check_positive(f"{name} (gain on the step's per-channel spatial mean)", options[name])
            options[name] = float(options[name])
    if "eps" in options:
        check_positive("eps", options["eps"])
    if "betas" in options:
        betas = options["betas"]
        pair = isinstance(betas, tuple | list) and len(betas) == 2
        if not (pair and all(is_real(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
    return float(lr), options


def caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package (and torch's ``no_grad`` decorator),
    seen from the function calling this: a warning points at the user's line whichever public
    function they called."""
    import torch.utils._contextlib as decorators

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    ours = lambda name: name.startswith(package) or name == os.path.abspath(decorators.__file__)  # noqa: E731
    frame, level = sys._getframe(1), 1
    while frame is not None and ours(os.path.abspath(frame.f_code.co_filename)):
        frame, level = frame.f_back, level + 1
    return level
