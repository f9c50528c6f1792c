"""One DDIM / BDIA-DDIM step as plain tensor algebra (the model's output is an input here).

Pinned convention (DESIGN §4). With ``a = sqrt(alphabar)``, ``s = sqrt(1 - alphabar)`` and
``eps_i = eps(z_i, t_i)``, the deterministic DDIM move of state ``z_i`` to the level of state ``j``
(either direction) is

    DDIM_{i->j}(z_i) = a_j * (z_i - s_i * eps_i) / a_i + s_j * eps_i          (1)

i.e. predict ``x0 = (z_i - s_i eps_i) / a_i`` and re-noise it to level ``j`` with the same ``eps_i``.
BDIA-DDIM (Zhang et al., ECCV 2024) replaces the step ``z_i -> z_{i-1}`` (for ``i < N``) by

    z_{i-1} = gamma * z_{i+1} - gamma * DDIM_{i->i+1}(z_i) + DDIM_{i->i-1}(z_i)   (2)

which is DDIM exactly at ``gamma = 0``. Because (2) is affine in ``z_{i+1}`` with coefficient
``gamma``, it can be solved for ``z_{i+1}`` given the pair ``(z_i, z_{i-1})``, with the same single
model call ``eps_i``:

    z_{i+1} = (z_{i-1} - DDIM_{i->i-1}(z_i)) / gamma + DDIM_{i->i+1}(z_i)      (3)

All tensors share one shape (any shape) and dtype; the scalar coefficients are float64 Python floats.
The levels ``alphabar`` are Python floats in ``(0, 1]``; others are a ``ValueError`` naming the argument
(one float comparison each, no tensor work).
"""

from __future__ import annotations

import math

import torch


def _bad_level(**levels: float) -> None:
    """Raise for the first of ``levels`` outside ``(0, 1]`` (the callers test them all in one expression)."""
    for name, value in levels.items():
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must lie in (0, 1] (a noise level alphas_cumprod[t]), got {value!r}")


def ddim_coefficients(alphabar_from: float, alphabar_to: float) -> tuple[float, float]:
    """``(c_z, c_eps)`` with ``DDIM_{i->j}(z) = c_z * z + c_eps * eps`` (eq. 1):
    ``c_z = a_j / a_i``, ``c_eps = s_j - a_j * s_i / a_i``."""
    if not (0.0 < alphabar_from <= 1.0 and 0.0 < alphabar_to <= 1.0):  # also False for NaN
        _bad_level(alphabar_from=alphabar_from, alphabar_to=alphabar_to)
    a_i, s_i = math.sqrt(alphabar_from), math.sqrt(1.0 - alphabar_from)
    a_j, s_j = math.sqrt(alphabar_to), math.sqrt(1.0 - alphabar_to)
    return a_j / a_i, s_j - a_j * s_i / a_i


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alphabar_from: float, alphabar_to: float) -> torch.Tensor:
    """Eq. (1): move ``z`` (at ``alphabar_from``) to ``alphabar_to`` along the predicted ``eps``.

    Sampling calls it with a larger ``alphabar_to`` (less noise), DDIM inversion with a smaller one.
    """
    c_z, c_eps = ddim_coefficients(alphabar_from, alphabar_to)
    return c_z * z + c_eps * eps


def bdia_step(z_above: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alphabar: float,
              alphabar_below: float, alphabar_above: float, gamma: float) -> torch.Tensor:
    """Eq. (2): ``z_{i-1}`` from ``z_{i+1}`` (``z_above``), ``z_i`` (``z``) and ``eps_i``.

    ``alphabar`` is the level of ``z_i``; ``alphabar_below`` of ``z_{i-1}``; ``alphabar_above`` of
    ``z_{i+1}``.
    """
    if not (0.0 < alphabar <= 1.0 and 0.0 < alphabar_below <= 1.0 and 0.0 < alphabar_above <= 1.0):
        _bad_level(alphabar=alphabar, alphabar_below=alphabar_below, alphabar_above=alphabar_above)
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    down = ddim_step(z, eps, alphabar, alphabar_below)
    if gamma == 0:
        return down
    return gamma * (z_above - ddim_step(z, eps, alphabar, alphabar_above)) + down


def bdia_inverse_step(z_below: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alphabar: float,
                      alphabar_below: float, alphabar_above: float, gamma: float) -> torch.Tensor:
    """Eq. (3): ``z_{i+1}`` from ``z_{i-1}`` (``z_below``), ``z_i`` (``z``) and ``eps_i``; ``gamma > 0``.

    Exact up to rounding: it undoes :func:`bdia_step` given the same ``eps_i``. Rounding errors of
    the pair are divided by ``gamma`` at every step.
    """
    if not (0.0 < alphabar <= 1.0 and 0.0 < alphabar_below <= 1.0 and 0.0 < alphabar_above <= 1.0):
        _bad_level(alphabar=alphabar, alphabar_below=alphabar_below, alphabar_above=alphabar_above)
    if not (gamma > 0 and math.isfinite(gamma)):  # also False for NaN
        raise ValueError(f"gamma must be > 0 and finite (the inverse step divides by it), got {gamma!r}")
    return (z_below - ddim_step(z, eps, alphabar, alphabar_below)) / gamma + ddim_step(z, eps, alphabar, alphabar_above)
