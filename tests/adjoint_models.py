"""Smooth eps models on a continuous log-SNR grid, for the convergence-order tests of the gradients.

The grid: a table of ``RESOLUTION + 1`` training timesteps whose log-SNR ``lambda = log(a / s)``
falls linearly from ``LAM_MAX`` (``t = 0``, the clean state 0) to ``LAM_MIN`` (``t = RESOLUTION``,
the noise). ``N`` sampling steps use every ``RESOLUTION / N``-th timestep, so all the grids of one
test sample one continuous schedule, evenly in ``lambda`` (smooth step-size ratios in ``rho``).

Models (callables ``eps(z, t, mean=c)``; ``z`` and ``mean`` are ``(B, L, D)``):

- :func:`gaussian_eps`: the exact noise prediction for data ``x0 ~ N(mean, S^2 I)``,
  ``eps = s (z - a mean) / (a^2 S^2 + s^2)``. Its probability-flow map is known in closed form,
  :func:`gaussian_flow`: ``z_0 = a_0 mean + r_0 (z_T - a_N mean) / r_N``, ``r = sqrt(a^2 S^2 + s^2)``,
  so the exact gradients need no reference solver.
- :class:`MlpEps`: that plus a smooth nonlinear term ``0.3 tanh(z W + mean U + lambda b)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from decinv_fast.diffusion import Schedule

RESOLUTION = 5120
LAM_MIN, LAM_MAX = -2.5, 2.5
DATA_STD = 0.7
NS = (20, 40, 80, 160)  # the step counts of the convergence-order fits


def lam(t) -> float:
    return LAM_MAX - (LAM_MAX - LAM_MIN) * float(t) / RESOLUTION


def alphabar(t) -> float:
    return 1.0 / (1.0 + math.exp(-2.0 * lam(t)))


def loglinear_schedule(num_steps: int) -> Schedule:
    """``num_steps`` states evenly spaced in log-SNR (``num_steps`` must divide ``RESOLUTION``)."""
    assert RESOLUTION % num_steps == 0
    table = torch.tensor([alphabar(t) for t in range(RESOLUTION + 1)], dtype=torch.float64)
    stride = RESOLUTION // num_steps
    steps = [stride * i for i in range(num_steps, 0, -1)]
    return Schedule.from_alphas_cumprod(table, steps, final_alpha_cumprod=float(table[0]))


def gaussian_eps(z: torch.Tensor, t, mean: torch.Tensor) -> torch.Tensor:
    ab = alphabar(t)
    a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
    return s * (z - a * mean) / (a * a * DATA_STD**2 + s * s)


def gaussian_flow(z_T: torch.Tensor, mean: torch.Tensor, t_from: int = RESOLUTION, t_to: int = 0) -> torch.Tensor:
    """The exact probability-flow map of :func:`gaussian_eps` from ``t_from`` to ``t_to``."""
    def parts(t):
        ab = alphabar(t)
        return math.sqrt(ab), math.sqrt(ab * DATA_STD**2 + 1.0 - ab)

    a_n, r_n = parts(t_from)
    a_0, r_0 = parts(t_to)
    return a_0 * mean + r_0 * (z_T - a_n * mean) / r_n


class MlpEps:
    """``gaussian_eps + 0.3 tanh(z W + mean U + lambda b)``, fp64, smooth in ``z``, ``mean`` and ``t``."""

    def __init__(self, dim: int, seed: int = 0, gain: float = 0.3):
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
        self.u = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
        self.b = torch.randn(dim, generator=gen, dtype=torch.float64) * 0.5
        self.gain = gain

    def params(self) -> list[torch.Tensor]:
        return [self.w, self.u, self.b]

    def __call__(self, z: torch.Tensor, t, mean: torch.Tensor) -> torch.Tensor:
        return gaussian_eps(z, t, mean) + self.gain * torch.tanh(z @ self.w + mean @ self.u + lam(t) * self.b)


def smooth_loss(z0: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear scalar loss of ``z0``."""
    weights = torch.linspace(-1.0, 1.0, z0.numel(), dtype=z0.dtype).reshape(z0.shape)
    return (torch.cos(1.3 * z0) * weights).sum() + 0.25 * (z0 * z0).sum()


def problem(shape=(2, 3, 4), seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_T, mean)`` in fp64."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64),
            0.5 * torch.randn(shape, generator=gen, dtype=torch.float64))


def brownian_noise(num_steps: int, shape, fine_steps: int = 1280, seed: int = 3) -> torch.Tensor:
    """Recorded SDE noise ``(num_steps, *shape)`` of ONE Brownian path shared by every ``num_steps``.

    The SDE step of :mod:`decinv_fast.diffusion.ei` adds, in ``u = a z / s^2``, the increment of a
    Brownian motion in the clock ``tau = e^{2 lambda}``, ``sqrt(tau_j - tau_i) xi``. The path is drawn
    on the ``fine_steps`` grid; a coarse step's ``xi`` is its summed increments over their std.
    """
    assert fine_steps % num_steps == 0
    tau = [math.exp(2.0 * lam(RESOLUTION * i // fine_steps)) for i in range(fine_steps + 1)]
    gen = torch.Generator().manual_seed(seed)
    inc = [math.sqrt(tau[i - 1] - tau[i]) * torch.randn(shape, generator=gen, dtype=torch.float64)
           for i in range(1, fine_steps + 1)]  # inc[i-1]: over the fine interval between states i and i-1
    stride, out = fine_steps // num_steps, []
    for k in range(num_steps):  # step k leaves coarse state num_steps - k
        hi = num_steps - k
        total = sum(inc[q] for q in range((hi - 1) * stride, hi * stride))
        out.append(total / math.sqrt(tau[(hi - 1) * stride] - tau[hi * stride]))
    return torch.stack(out)


def slope(errors) -> float:
    """Fitted log-log slope of ``errors`` over :data:`NS`."""
    return float(np.polyfit(np.log(NS), np.log(errors), 1)[0])


def node_state_errors(model, num_steps: int, order: int = 1, noise=None) -> dict[int, float]:
    """``{j: ||z'_j - z_j|| / ||z_j||}`` for the nodes ``j = 1..N-1``: ``z'_j`` the state at which the default
    (``states="recompute"``) adjoint sweep evaluated the model, ``z_j`` the forward pass's state."""
    from decinv_fast.diffusion import adjoint_gradients, ei_sample

    z_T, mean = problem()
    grid, forward, calls = loglinear_schedule(num_steps), {}, []
    ei_sample(model, grid, z_T, order=order, noise=noise, mean=mean,
              callback=lambda i, z: forward.__setitem__(i, z.detach().clone()))

    def spy(z, t, mean):
        calls.append((t, z.detach().clone()))
        return model(z, t, mean=mean)

    adjoint_gradients(spy, grid, z_T, smooth_loss, order=order, noise=noise, mean=mean)
    nodes = calls[-num_steps:]  # the sweep's nodes j = 1..N come last
    assert [t for t, _ in nodes] == [grid.t(j) for j in range(1, num_steps + 1)]
    return {j: float((z - forward[j]).norm() / forward[j].norm()) for j, (_, z) in enumerate(nodes[:-1], start=1)}
