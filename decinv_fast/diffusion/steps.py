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
The levels ``alphabar`` are Python floats in ``(0, 1]``; others (a string too) are a ``ValueError`` naming the
argument, as are tensors of different shapes or dtypes (no broadcasting). The checks are float comparisons and
shape/dtype comparisons only, no tensor work, so the samplers' inner loops call these functions as they are.
``gamma`` is plain algebra here: any finite number for (2), any finite number ``> 0`` for (3); the samplers
(:mod:`.samplers`) restrict it to ``[0, 1]`` / ``(0, 1]``.
"""

from __future__ import annotations

import math

import torch


def _levels_ok(*levels) -> bool:
    """All ``levels`` in ``(0, 1]`` (False for NaN and for what is no number)."""
    try:
        return all(0.0 < value <= 1.0 for value in levels)
    except TypeError:
        return False


def _bad_level(**levels: float) -> None:
    """Raise for the first of ``levels`` outside ``(0, 1]`` (the callers test them all in one expression)."""
    for name, value in levels.items():
        if not _levels_ok(value):
            raise ValueError(f"{name} must lie in (0, 1] (a noise level alphas_cumprod[t]), got {value!r}")


def _check_tensors(**tensors: torch.Tensor) -> None:
    """The step's tensors are tensors of one shape and dtype (``z``-like arguments broadcast silently otherwise)."""
    (first, like), *rest = tensors.items()
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    for name, value in rest:
        if value.shape != like.shape or value.dtype != like.dtype:
            raise ValueError(f"{name} {tuple(value.shape)} {value.dtype} and {first} {tuple(like.shape)} {like.dtype} "
                             "must have the same shape and dtype")


def _check_gamma(gamma, *, inverse: bool) -> None:
    """``gamma`` a finite number (``> 0`` for the inverse step, which divides by it)."""
    try:
        ok = math.isfinite(gamma) and (gamma > 0 or not inverse) and not isinstance(gamma, bool)
    except TypeError:
        ok = False
    if not ok:
        need = "be > 0 and finite (the inverse step divides by it)" if inverse else "be a finite number"
        raise ValueError(f"gamma must {need}, got {gamma!r}")


def ddim_coefficients(alphabar_from: float, alphabar_to: float) -> tuple[float, float]:
    """``(c_z, c_eps)`` with ``DDIM_{i->j}(z) = c_z * z + c_eps * eps`` (eq. 1):
    ``c_z = a_j / a_i``, ``c_eps = s_j - a_j * s_i / a_i``."""
    if not _levels_ok(alphabar_from, alphabar_to):
        _bad_level(alphabar_from=alphabar_from, alphabar_to=alphabar_to)
    a_i, s_i = math.sqrt(alphabar_from), math.sqrt(1.0 - alphabar_from)
    a_j, s_j = math.sqrt(alphabar_to), math.sqrt(1.0 - alphabar_to)
    return a_j / a_i, s_j - a_j * s_i / a_i


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alphabar_from: float, alphabar_to: float) -> torch.Tensor:
    """Eq. (1): move ``z`` (at ``alphabar_from``) to ``alphabar_to`` along the predicted ``eps``.

    Sampling calls it with a larger ``alphabar_to`` (less noise), DDIM inversion with a smaller one.
    """
    _check_tensors(z=z, eps=eps)
    return _ddim(z, eps, alphabar_from, alphabar_to)


def _ddim(z: torch.Tensor, eps: torch.Tensor, alphabar_from: float, alphabar_to: float) -> torch.Tensor:
    """:func:`ddim_step` on tensors already checked."""
    c_z, c_eps = ddim_coefficients(alphabar_from, alphabar_to)
    return c_z * z + c_eps * eps


def bdia_step(z_above: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alphabar: float,
              alphabar_below: float, alphabar_above: float, gamma: float) -> torch.Tensor:
    """Eq. (2): ``z_{i-1}`` from ``z_{i+1}`` (``z_above``), ``z_i`` (``z``) and ``eps_i``.

    ``alphabar`` is the level of ``z_i``; ``alphabar_below`` of ``z_{i-1}``; ``alphabar_above`` of
    ``z_{i+1}``.
    """
    _check_step(z_above=z_above, z=z, eps=eps, levels=(alphabar, alphabar_below, alphabar_above), gamma=gamma,
                inverse=False)
    down = _ddim(z, eps, alphabar, alphabar_below)
    if gamma == 0:
        return down
    return gamma * (z_above - _ddim(z, eps, alphabar, alphabar_above)) + down


def bdia_inverse_step(z_below: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alphabar: float,
                      alphabar_below: float, alphabar_above: float, gamma: float) -> torch.Tensor:
    """Eq. (3): ``z_{i+1}`` from ``z_{i-1}`` (``z_below``), ``z_i`` (``z``) and ``eps_i``; ``gamma > 0``.

    Exact up to rounding: it undoes :func:`bdia_step` given the same ``eps_i``. Rounding errors of
    the pair are divided by ``gamma`` at every step.
    """
    _check_step(z_below=z_below, z=z, eps=eps, levels=(alphabar, alphabar_below, alphabar_above), gamma=gamma,
                inverse=True)
    return (z_below - _ddim(z, eps, alphabar, alphabar_below)) / gamma + _ddim(z, eps, alphabar, alphabar_above)


def _check_step(*, levels: tuple, gamma, inverse: bool, **tensors: torch.Tensor) -> None:
    """The checks of :func:`bdia_step` / :func:`bdia_inverse_step`: levels first, then ``gamma``, then the tensors."""
    if not _levels_ok(*levels):
        _bad_level(**dict(zip(("alphabar", "alphabar_below", "alphabar_above"), levels, strict=True)))
    _check_gamma(gamma, inverse=inverse)
    _check_tensors(**tensors)
