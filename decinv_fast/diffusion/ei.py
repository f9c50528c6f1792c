"""Exponential-integrator samplers: the forward passes that AdjointDEIS differentiates.

Variables. On the schedule of :mod:`.schedule` a state is ``z = a * x0 + s * eps`` with
``a = sqrt(alphabar)``, ``s = sqrt(1 - alphabar)``; the log-SNR is ``lambda = log(a / s)`` and
``rho = s / a = exp(-lambda)``. The eps model defines the denoiser (data prediction)

    D(z, t) = (z - s * eps(z, t)) / a.

The probability-flow ODE (``k = 1``) and the diffusion SDE (``k = 2``) of the variance-preserving
diffusion, in the scaled variable ``u = z / m_k`` with ``m_k = a * rho^k`` (``u = z / s`` for the
ODE, ``u = a z / s^2`` for the SDE), both read

    du/dlambda = k e^{k lambda} D(m_k u, t(lambda))        (+ dW_u for the SDE)           (U)

(from ``dz/dt = f z - (k/2) g^2 score`` plus ``(k - 1) g dw``, with ``f = d log(a)/dt``,
``g^2 = d(s^2)/dt - 2 f s^2`` and ``score = -eps / s``). The change of variable integrates the
linear part of the drift exactly -- that is the exponential integrator -- and leaves the denoiser,
which varies slowly, to a polynomial quadrature in ``lambda`` with the weight ``k e^{k lambda}``:

- order 1 (``D`` frozen at the start of the step): for the ODE exactly DDIM
  (:func:`.steps.ddim_step`); for the SDE, with recorded standard normal noise ``xi``,
  ``z_j = a_j (r^2 z_i / a_i + (1 - r^2) D_i) + s_j sqrt(1 - r^2) xi``, ``r = rho_j / rho_i``,
  which is DDIM with ``eta = 1`` (the DDPM posterior step) on the grid (:func:`step_coefficients`);
- order 2, multistep ("2M", ODE only): ``D`` linear in ``lambda`` through the last two evaluations,
  integrated exactly against ``e^lambda`` (:func:`exp_weights`); the first step, and a final step
  onto ``alphabar_0 = 1`` (``lambda = inf``), are order 1.

Sampling goes ``i -> i - 1`` from state ``N`` to 0; step ``k = 0, ..., N - 1`` of a pass leaves
state ``N - k`` and uses ``noise[k]``.

Nothing here disables autograd: run under ``torch.no_grad()`` to sample, or with grad to get the
unrolled autograd baseline that the adjoint and reversible gradients are tested against.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ..options import check_finite, is_int, tensor_hint
from .denoiser import Denoiser
from .samplers import check_result, prepare
from .schedule import Schedule
from .steps import ddim_coefficients

ORDERS = (1, 2)


def lam(alphabar: float) -> float:
    """Log-SNR ``log(a / s)`` of a level (``inf`` for ``alphabar = 1``)."""
    return math.inf if alphabar >= 1.0 else 0.5 * math.log(alphabar / (1.0 - alphabar))


def rho(alphabar: float) -> float:
    """``s / a = exp(-lambda)`` (0 for ``alphabar = 1``)."""
    return math.sqrt((1.0 - alphabar) / alphabar)


def scale(alphabar: float, k: int) -> float:
    """``m_k = a rho^k`` with ``z = m_k u`` (``s`` for the ODE, ``s^2 / a`` for the SDE)."""
    return math.sqrt(alphabar) * rho(alphabar) ** k


def step_coefficients(alphabar_from: float, alphabar_to: float, stochastic: bool) -> tuple[float, float, float]:
    """``(c_z, c_eps, c_xi)`` of the first-order step ``z_to = c_z z + c_eps eps + c_xi xi``.

    ODE: DDIM, :func:`.steps.ddim_coefficients`, ``c_xi = 0``. SDE (``rho_to <= rho_from``):
    ``c_z = a_to / a_from``, ``c_eps = -a_to (rho_from^2 - rho_to^2) / rho_from``,
    ``c_xi = s_to sqrt(1 - rho_to^2 / rho_from^2)``. The same formulas run upwards (``rho_to >
    rho_from``, no noise term) for the state reconstruction of the adjoint sweep.
    """
    if not stochastic:
        return (*ddim_coefficients(alphabar_from, alphabar_to), 0.0)
    r_i, r_j = rho(alphabar_from), rho(alphabar_to)
    a_i, a_j = math.sqrt(alphabar_from), math.sqrt(alphabar_to)
    c_xi = math.sqrt(1.0 - alphabar_to) * math.sqrt(max(1.0 - (r_j / r_i) ** 2, 0.0))
    return a_j / a_i, -a_j * (r_i * r_i - r_j * r_j) / r_i, c_xi


def ab2_weights(x_prev: float, x_cur: float, x_next: float) -> tuple[float, float]:
    """``(w_cur, w_prev)`` with ``int_{x_cur}^{x_next} p = w_cur f_cur + w_prev f_prev``.

    ``p`` is the line through ``(x_prev, f_prev)`` and ``(x_cur, f_cur)``; with ``D = x_next - x_cur``
    and ``d = x_cur - x_prev``: ``w_cur = D + D^2 / (2 d)``, ``w_prev = -D^2 / (2 d)`` (variable-step
    Adams-Bashforth-2, either direction).
    """
    big, small = x_next - x_cur, x_cur - x_prev
    if small == 0.0:
        raise ValueError(f"ab2_weights: repeated node {x_cur}; the grid has a repeated level")
    return big + big * big / (2.0 * small), -big * big / (2.0 * small)


def exp_weights(lam_prev: float, lam_cur: float, lam_next: float, k: int) -> tuple[float, float]:
    """``(w_cur, w_prev)`` with ``int_{lam_cur}^{lam_next} k e^{k l} p(l) dl = w_cur f_cur + w_prev f_prev``.

    ``p`` is the line through ``(lam_prev, f_prev)`` and ``(lam_cur, f_cur)``. With ``h = lam_next -
    lam_cur``, ``d = lam_cur - lam_prev``, ``I0 = e^{k lam_next} - e^{k lam_cur}`` and
    ``I1 = int k e^{k l} (l - lam_cur) dl = e^{k lam_next} h - I0 / k``: ``w_cur = I0 + I1 / d``,
    ``w_prev = -I1 / d``. All nodes finite.
    """
    h, d = lam_next - lam_cur, lam_cur - lam_prev
    if d == 0.0:
        raise ValueError(f"exp_weights: repeated node {lam_cur}; the grid has a repeated level")
    base = math.exp(k * lam_cur)
    i0 = base * math.expm1(k * h)
    i1 = base * math.exp(k * h) * h - i0 / k
    return i0 + i1 / d, -i1 / d


def check_order(order) -> int:
    if not is_int(order) or order not in ORDERS:
        raise ValueError(f"order must be 1 (DEIS-1 / DDIM) or 2 (2M multistep), got {order!r}{tensor_hint(order)}")
    return int(order)


class StepNoise:
    """The recorded noise of an SDE pass: ``xi_k`` for sampling step ``k = 0..N-1``.

    ``noise`` is either an ``int`` seed (``xi_k`` is drawn from a CPU generator seeded with
    ``(seed, k)``, so any step's noise can be regenerated in any order: O(1) memory; drawn for the whole
    batch at once, so a batch's first samples see the noise they see alone and a later sample another one),
    or a tensor ``(N, *z.shape)``, or a sequence of ``N`` tensors shaped like ``z`` (kept by reference).
    """

    def __init__(self, noise, num_steps: int, like: torch.Tensor):
        self.num_steps = num_steps
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        if isinstance(noise, numbers.Integral) and not isinstance(noise, bool):
            self.seed, self.items = int(noise), None
            return
        if isinstance(noise, torch.Tensor):
            items = list(noise.unbind(0)) if noise.dim() == like.dim() + 1 else None
            if items is None:
                raise ValueError(
                    f"noise must be (N={num_steps}, *z.shape={tuple(like.shape)}), got shape {tuple(noise.shape)}"
                )
        elif isinstance(noise, Sequence) and not isinstance(noise, str):
            items = list(noise)
        else:
            raise TypeError(f"noise must be an int seed, a tensor (N, *z.shape) or a list of N tensors, "
                            f"got {type(noise).__name__}")
        if len(items) != num_steps:
            raise ValueError(f"noise has {len(items)} steps but the schedule has N={num_steps}")
        for k, xi in enumerate(items):
            if not isinstance(xi, torch.Tensor) or not xi.is_floating_point() or xi.shape != like.shape:
                got = type(xi).__name__ if not isinstance(xi, torch.Tensor) else (
                    f"shape {tuple(xi.shape)}" if xi.is_floating_point() else f"{xi.dtype}, shape {tuple(xi.shape)}")
                raise ValueError(f"noise[{k}] must be a floating tensor shaped like z {tuple(like.shape)}, got {got}")
            check_finite(f"noise[{k}]", xi)
        self.seed, self.items = None, items

    def __call__(self, k: int) -> torch.Tensor:
        """``xi_k`` in the dtype and on the device of ``z``."""
        if self.items is not None:
            return self.items[k].to(self.device, self.dtype)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + k) % (2**63 - 1))
        return torch.randn(self.shape, generator=gen, dtype=torch.float64).to(self.device, self.dtype)


def denoised(z: torch.Tensor, eps: torch.Tensor, alphabar: float) -> torch.Tensor:
    """``D = (z - s eps) / a``."""
    return (z - math.sqrt(1.0 - alphabar) * eps) / math.sqrt(alphabar)


def multistep_weight(levels, lams: list[float], i: int, order: int) -> float:
    """``r`` of the 2M step ``i -> i-1``: ``z_{i-1} = DDIM_{i->i-1}(z_i) + r (D_{i+1} - D_i)``.

    ``r = m_{i-1} w_prev`` with ``w_prev`` from :func:`exp_weights`; 0 for order 1, for the first
    step (``i = N``, no ``D_{i+1}``) and for a step onto ``alphabar = 1`` (``lambda = inf``).
    """
    if order != 2 or i >= len(levels) - 1 or not math.isfinite(lams[i - 1]):
        return 0.0
    return scale(levels[i - 1], 1) * exp_weights(lams[i + 1], lams[i], lams[i - 1], 1)[1]


def forward_pass(denoiser: Denoiser, grid: Schedule, z_T: torch.Tensor, order: int, noise: StepNoise | None,
                 on_state: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The sampling loop shared by :func:`ei_sample` and AdjointDEIS; returns ``z_0``.

    ``on_state(i, z_i)`` sees every new state ``i = N-1..0``.
    """
    n = grid.num_steps
    levels = grid.alphas_cumprod
    lams = [lam(v) for v in levels]
    z, d_above = z_T, None
    for i in range(n, 0, -1):
        eps = denoiser(z, grid.t(i))
        c_z, c_eps, c_xi = step_coefficients(levels[i], levels[i - 1], noise is not None)
        z_next = c_z * z + c_eps * eps
        if noise is not None:
            z_next = z_next + c_xi * noise(n - i)
        d_here = denoised(z, eps, levels[i]) if order == 2 else None
        r = multistep_weight(levels, lams, i, order)
        if r != 0.0:
            z_next = z_next + r * (d_above - d_here)
        z, d_above = z_next, d_here
        if on_state is not None:
            on_state(i - 1, z)
    return check_result("ei_sample/adjoint_sample", z)


def ei_sample(model, schedule, z_T: torch.Tensor, *, order: int = 1, noise=None,
              callback: Callable[[int, torch.Tensor], None] | None = None, **cond) -> torch.Tensor:
    """Exponential-integrator sampling from ``z_T`` (``(B, C, h, w)``, any shape for callables); returns ``z_0``.

    Args:
        model, schedule, **cond: as for :func:`.samplers.ddim_sample`.
        order: 1 (DDIM, bit-identical to :func:`.samplers.ddim_sample`) or 2 (2M multistep) for the
            ODE; must be 1 for the SDE.
        noise: ``None`` for the probability-flow ODE, else the recorded noise of the diffusion SDE
            (see :class:`StepNoise`).
        callback: ``callback(i, z_i)`` for every new state.

    Runs in the caller's grad mode (keeps the graph when autograd is on).
    """
    denoiser, grid, order, steps_noise = setup_pass(model, schedule, z_T, order, noise, cond, callback)
    return forward_pass(denoiser, grid, z_T, order, steps_noise, callback)


def setup_pass(model, schedule, z_T, order, noise, cond: dict, callback=None
               ) -> tuple[Denoiser, Schedule, int, StepNoise | None]:
    """Validate the arguments of a sampling pass (errors name the argument)."""
    order = check_order(order)
    denoiser, grid = prepare(model, schedule, z_T, "z_T", cond, callback)
    if noise is not None and order != 1:
        raise ValueError(f"order={order}: the SDE variant (noise given) is first order only; use order=1")
    steps_noise = None if noise is None else StepNoise(noise, grid.num_steps, z_T)
    return denoiser, grid, order, steps_noise
