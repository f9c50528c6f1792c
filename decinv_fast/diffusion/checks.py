"""Argument checks and compact descriptions shared by the diffusion functions (errors name the argument)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ..options import check_finite, is_real, tensor_hint

log = logging.getLogger(__name__)

BDIA_GAMMA = 0.96  # BDIA's gamma where a function defaults it (generation, invert_to_noise, detect, optimize_noise)


def check_gamma(gamma, *, inverse: bool) -> float:
    """``gamma`` in [0, 1] for sampling, in (0, 1] for inversion (it is divided by)."""
    ok = is_real(gamma)
    low_ok = ok and (gamma > 0 if inverse else gamma >= 0)
    if not (low_ok and gamma <= 1):
        where = "(0, 1] for inversion (it divides every step)" if inverse else "[0, 1]"
        raise ValueError(f"gamma must lie in {where}, got {gamma!r}{tensor_hint(gamma)}")
    if inverse and gamma < 0.9:
        log.warning("gamma=%s: BDIA inversion divides the error of every state by gamma; expect it to grow", gamma)
    return float(gamma)


def check_state(name: str, z) -> None:
    """``z`` (argument ``name``) is a floating-point tensor with at least one sample and no NaN/inf."""
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if z.numel() == 0:
        raise ValueError(f"{name}: empty batch (shape {tuple(z.shape)}); give at least one sample")
    check_finite(name, z)


def check_cond(cond) -> dict:
    """``cond``, the eps model's keyword arguments (as at generation): a mapping or ``None`` -> a dict."""
    if cond is not None and not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a dict of the eps model's keyword arguments (as at generation) or None, "
                        f"got {type(cond).__name__}")
    return dict(cond or {})


def check_callback(callback) -> None:
    """``callback`` is ``None`` or callable (checked before the first model call, not after it)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable or None, got {type(callback).__name__}")


def describe(value) -> str:
    """A tensor as ``(2, 4, 8, 8) float32`` (shape and dtype, no values); anything else as its ``repr``."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return repr(value)


def one_line(name: str, **facts) -> str:
    """``name(key value, ...)``: tensors by :func:`describe`, dicts of tensors by key, floats to 4 digits, sequences
    of tensors by count; the compact repr of the diffusion results (the dataclass default prints every tensor)."""
    parts = []
    for key, value in facts.items():
        if isinstance(value, torch.Tensor):
            text = f"{key} {describe(value)}"
        elif isinstance(value, dict):
            text = f"{key} {{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
        elif isinstance(value, tuple | list) and value and all(isinstance(v, torch.Tensor) for v in value):
            text = f"{key}: {len(value)} tensor(s)"
        elif isinstance(value, float):
            text = f"{key}={value:.4g}"
        else:
            text = f"{key}={value!r}"
        parts.append(text)
    return f"{name}(" + ", ".join(parts) + ")"
