"""The backward sweeps of AdjointDEIS: the adjoint ODE integrated from state 0 up to state ``N``.

See :mod:`.adjoint` for the derivation; the equation tags refer to it. Memory: the adjoint at the
last two nodes, the last two denoised states (2M), the current state, the running sums of the
conditioning / parameter gradients, and one model graph at a time; plus, with
``states="cache"``, the ``N - 1`` states kept by the forward pass.
"""

from __future__ import annotations

import math

import torch

from ._autodiff import Accumulator, Binding, Node
from .ei import StepNoise, ab2_weights, denoised, exp_weights, lam, multistep_weight, scale, step_coefficients
from .schedule import Schedule

SCHEMES = ("transpose", "explicit")


class Sweep:
    """What both sweeps share: the grid's coefficients and the states of the nodes (eqs. S, S')."""

    def __init__(self, grid: Schedule, order: int, noise: StepNoise | None, z_T: torch.Tensor, z0: torch.Tensor,
                 cache: dict | None):
        self.grid, self.order, self.noise, self.z_T, self.z0, self.cache = grid, order, noise, z_T, z0, cache
        self.n = grid.num_steps
        self.levels = grid.alphas_cumprod
        self.k = 2 if noise is not None else 1
        self.lams = [lam(v) for v in self.levels]
        self._last_xi: tuple[int, torch.Tensor] | None = None

    def xi(self, k: int) -> torch.Tensor:
        """The recorded noise of sampling step ``k``. The sweep asks for each step's twice in a row
        (:meth:`next_state` then :meth:`correct`); a seeded one is drawn once."""
        if self._last_xi is None or self._last_xi[0] != k:
            self._last_xi = (k, self.noise(k))
        return self._last_xi[1]

    def exp_interval(self, i: int) -> tuple[float, float]:
        """``int_{lambda_i}^{lambda_{i+1}} k e^{k l} p(l) dl = w_cur f_i + w_prev f_{i-1}`` (order 1 at i = 1)."""
        if self.order == 2 and i >= 2:
            return exp_weights(self.lams[i - 1], self.lams[i], self.lams[i + 1], self.k)
        return math.exp(self.k * self.lams[i + 1]) - math.exp(self.k * self.lams[i]), 0.0

    def step(self, j: int) -> tuple[float, float, float, float]:
        """``(c_z, c_eps, c_xi, r)`` of the sampling step ``j -> j-1`` exactly as :func:`.ei.forward_pass` takes it:
        ``z_{j-1} = c_z z_j + c_eps eps_j + c_xi xi + r (D_{j+1} - D_j)``."""
        c_z, c_eps, c_xi = step_coefficients(self.levels[j], self.levels[j - 1], self.noise is not None)
        return c_z, c_eps, c_xi, multistep_weight(self.levels, self.lams, j, self.order)

    def first_state(self, denoiser) -> torch.Tensor:
        """``z_1``: cached, ``z_T`` (one step), or the first-order step ``1 -> 0`` inverted with ``eps(z_0, t_1)``."""
        if self.n == 1:
            return self.z_T
        if self.cache is not None:
            return self.cache[1]
        c_z, c_eps, c_xi, _ = self.step(1)
        with torch.no_grad():
            eps = denoiser(self.z0, self.grid.t(1))
        shift = c_xi * self.xi(self.n - 1) if self.noise is not None else 0.0
        return (self.z0 - c_eps * eps - shift) / c_z

    def next_state(self, i: int, z: torch.Tensor, d_here: torch.Tensor, d_prev: torch.Tensor | None) -> torch.Tensor:
        """``z_{i+1}`` from node ``i``: cached, ``z_T``, or ``u_{i+1} = u_i + w D_i + v D_{i-1} - Delta W_u`` (S)."""
        if i + 1 == self.n:
            return self.z_T
        if self.cache is not None:
            return self.cache[i + 1]
        k, levels = self.k, self.levels
        w_cur, w_prev = self.exp_interval(i)
        u = z / scale(levels[i], k) + w_cur * d_here
        if w_prev != 0.0:
            u = u + w_prev * d_prev
        if self.noise is not None:  # the recorded noise of the sampling step i+1 -> i, in u units of state i
            c_xi = step_coefficients(levels[i + 1], levels[i], True)[2]
            u = u - (c_xi / scale(levels[i], k)) * self.xi(self.n - (i + 1))
        return scale(levels[i + 1], k) * u

    def correct(self, j: int, z_below: torch.Tensor, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One fixed-point pass on the rebuilt ``z_j`` (eq. S'), with the ``eps_j`` its node just computed.

        Solves the first-order sampling step ``j -> j-1`` for ``z_j`` given ``z_{j-1}`` (no model call).
        2M steps are left alone: their rebuilt states already match the forward pass to O(h^3)
        (measured), and a pass with an extrapolated ``D_{j+1}`` was worse. Cached states, and
        ``z_N = z_T``, are exact and are returned unchanged.
        """
        c_z, c_eps, c_xi, r = self.step(j)
        if self.cache is not None or j == self.n or r != 0.0:
            return z
        rhs = z_below - c_eps * eps
        if self.noise is not None:
            rhs = rhs - c_xi * self.xi(self.n - j)
        return rhs / c_z


def solve_adjoint(binding: Binding, grid: Schedule, order: int, noise: StepNoise | None, z_T: torch.Tensor,
                  z0: torch.Tensor, grad_z0: torch.Tensor, cond_values: list[torch.Tensor],
                  params: list[torch.Tensor], cache: dict[int, torch.Tensor] | None, scheme: str = "transpose"):
    """``(dL/dz_T, [dL/dc...], [dL/dtheta...])`` from ``grad_z0 = dL/dz_0``."""
    sweep = Sweep(grid, order, noise, z_T, z0, cache)
    leaves = [c.detach().requires_grad_(True) for c in cond_values]
    denoiser = binding.denoiser(leaves)
    sums = Accumulator([*leaves, *params])
    run = _transpose if scheme == "transpose" else _explicit
    grad_zT = run(sweep, denoiser, leaves, params, sums, grad_z0.to(z0.dtype))
    return grad_zT, sums.sums[:len(leaves)], sums.sums[len(leaves):]


def _transpose(sweep: Sweep, denoiser, leaves, params, sums: Accumulator, g0: torch.Tensor) -> torch.Tensor:
    """Eqs. (T1) / (T2) in ``z`` units: ``g_j = dL/dz_j`` from ``g_{j-1}``, ``g_{j-2}``; node ``j`` = 1..N."""
    levels, g_below, g_below2, r_below = sweep.levels, g0, None, 0.0
    z, d_prev, z_below = sweep.first_state(denoiser), None, sweep.z0
    for j in range(1, sweep.n + 1):
        a_j, s_j = math.sqrt(levels[j]), math.sqrt(1.0 - levels[j])
        c_z, c_eps, _, r_here = sweep.step(j)
        d_cot = -r_here * g_below if r_here != 0.0 else None  # cotangent of D_j: -r_j g_{j-1} + r_{j-1} g_{j-2}
        if r_below != 0.0:
            d_cot = r_below * g_below2 if d_cot is None else d_cot + r_below * g_below2
        cot = c_eps * g_below if d_cot is None else c_eps * g_below - (s_j / a_j) * d_cot
        node = Node(denoiser, z, sweep.grid.t(j), leaves, params)
        g_eps, g_rest = node.vjp(cot)
        sums.add(1.0, g_rest)
        g_here = c_z * g_below + g_eps if d_cot is None else c_z * g_below + d_cot / a_j + g_eps
        if j < sweep.n:
            z = sweep.correct(j, z_below, z, node.eps)
            d_here = denoised(z, node.eps, levels[j])
            z_below, z = z, sweep.next_state(j, z, d_here, d_prev)
            d_prev = d_here
        del node
        g_below2, g_below, r_below = g_below, g_here, r_here
    return g_below


def _explicit(sweep: Sweep, denoiser, leaves, params, sums: Accumulator, g0: torch.Tensor) -> torch.Tensor:
    """Eqs. (T0), (E1) / (E2) in ``B = m dL/dz`` units: fresh cotangent ``B_i`` at node ``i`` = 1..N-1."""
    n, k, levels, lams = sweep.n, sweep.k, sweep.levels, sweep.lams
    c_z, c_eps, _, _ = sweep.step(1)
    z, z_below = sweep.first_state(denoiser), sweep.z0
    node = Node(denoiser, z, sweep.grid.t(1), leaves, params)
    g_eps, g_rest = node.vjp(c_eps * g0, retain=n > 1)  # first interval: transpose of the step 1 -> 0 (T0)
    sums.add(1.0, g_rest)
    adj = scale(levels[1], k) * (c_z * g0 + g_eps)
    g_prev, d_prev = None, None
    for i in range(1, n):
        if i > 1:
            node = Node(denoiser, z, sweep.grid.t(i), leaves, params)
        a_i, s_i = math.sqrt(levels[i]), math.sqrt(1.0 - levels[i])
        g_eps, g_rest = node.vjp(adj)
        g_here = adj - s_i * g_eps  # G_i = a_i J_D^T B_i
        if sweep.order == 2 and i >= 2:
            w_cur, w_prev = ab2_weights(lams[i - 1], lams[i], lams[i + 1])
        else:
            w_cur, w_prev = lams[i + 1] - lams[i], 0.0
        e_next = sweep.exp_interval(i + 1)[1] if i + 1 < n else 0.0
        sums.add((s_i / a_i) * (sweep.exp_interval(i)[0] + e_next), g_rest)  # H_i = -(s/a) J_c(eps)^T B_i, eq. C
        z = sweep.correct(i, z_below, z, node.eps)
        d_here = denoised(z, node.eps, levels[i])
        if i + 1 < n:
            z_below, z = z, sweep.next_state(i, z, d_here, d_prev)
        step = w_cur * g_here if w_prev == 0.0 else w_cur * g_here + w_prev * g_prev
        adj = adj - k * step
        g_prev, d_prev = g_here, d_here
        del node
    return adj / scale(levels[n], k)
