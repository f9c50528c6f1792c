"""Exact reversible gradients through a BDIA-DDIM sampling run, with memory independent of ``N``.

Forward (the pinned convention of :mod:`.steps`, as :func:`.samplers.bdia_sample` runs it):

    z_{N-1} = c_z^- z_N + c_e^- eps_N                                         (first step: DDIM)
    z_{i-1} = gamma z_{i+1} + A_i z_i + B_i eps(z_i, t_i),     i = N-1..1                   (R)

with ``DDIM_{i->j}(z) = c_z(i,j) z + c_e(i,j) eps`` (:func:`.steps.ddim_coefficients`),
``A_i = c_z(i,i-1) - gamma c_z(i,i+1)`` and ``B_i = c_e(i,i-1) - gamma c_e(i,i+1)``.

Backward. Let ``g_k = dL/dz_k`` (total). ``z_k`` is read by step ``k`` (``A_k z_k + B_k eps_k``)
and by step ``k - 1`` (``gamma z_k``), and steps are undone in the order ``i = 1, 2, ..., N-1``:

    g_{i+1} += gamma g_{i-1}
    g_i     += A_i g_{i-1} + J_eps(z_i)^T (B_i g_{i-1}),      dL/dc += J_c(z_i)^T (B_i g_{i-1})

then ``g_N += c_z^- g_{N-1} + J_eps(z_N)^T (c_e^- g_{N-1})``. When step ``i`` is undone, ``g_{i-1}``
is complete (everything that reads ``z_{i-1}`` was undone before). The state ``z_{i+1}`` that the
next step needs is not stored: it is rebuilt from the pair ``(z_{i-1}, z_i)`` by BDIA's exact inverse
(:func:`.steps.bdia_inverse_step`), using the same ``eps(z_i, t_i)`` that the vector-Jacobian product
needs (one model forward + one backward per step). Only ``z_T``, the final pair ``(z_0, z_1)``, the
conditioning and the running gradients are kept; the rebuilt states match the forward pass up to
rounding amplified by about ``1 / gamma`` per step, so in fp64 the gradients equal autograd through
the unrolled sampler to ~1e-13 (tested to 1e-8). ``gamma`` must be in ``(0, 1]``: ``gamma = 0``
(DDIM) is not invertible.

Parameters: gradients reach the model's parameters that require grad (or ``params``), like any
autograd function; with guidance they flow through both branches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ._autodiff import Accumulator, Binding, Node, bind, model_parameters, single_backward
from .samplers import BdiaPair, bdia_pass, bdia_sample, check_gamma, prepare
from .schedule import Schedule, as_schedule
from .steps import bdia_inverse_step, ddim_coefficients

log = logging.getLogger(__name__)


@dataclass
class _Spec:
    binding: Binding
    grid: Schedule
    gamma: float
    params: list


class _ReversibleBdia(torch.autograd.Function):
    """``(z_0, z_1) = bdia_sample(z_T, c..., theta...)``; backward rebuilds the states (module docstring)."""

    @staticmethod
    def forward(ctx, spec: _Spec, z_T: torch.Tensor, *inputs: torch.Tensor):
        z0, z1 = bdia_sample(spec.binding.denoiser(), spec.grid, z_T, gamma=spec.gamma)  # z1 never z_T itself
        ctx.spec = spec
        ctx.save_for_backward(z_T, z0, z1, *inputs[:len(spec.binding.grad_names)])
        return z0, z1

    @staticmethod
    @single_backward("reversible_bdia_sample")
    def backward(ctx, grad_z0, grad_z1):
        spec = ctx.spec
        z_T, z0, z1, *cond_values = ctx.saved_tensors
        grad_zT, grads = _reverse_sweep(spec, z_T, z0, z1, grad_z0, grad_z1, cond_values)
        return (None, grad_zT, *grads)


def _reverse_sweep(spec: _Spec, z_T, z0, z1, grad_z0, grad_z1, cond_values):
    grid, gamma, n = spec.grid, spec.gamma, spec.grid.num_steps
    levels = grid.alphas_cumprod
    leaves = [c.detach().requires_grad_(True) for c in cond_values]
    denoiser = spec.binding.denoiser(leaves)
    sums = Accumulator([*leaves, *spec.params])
    g_below = grad_z0 if grad_z0 is not None else torch.zeros_like(z0)
    g_here = grad_z1 if grad_z1 is not None else torch.zeros_like(z1)
    below, z = z0, z1
    for i in range(1, n):
        down_z, down_e = ddim_coefficients(levels[i], levels[i - 1])
        up_z, up_e = ddim_coefficients(levels[i], levels[i + 1])
        node = Node(denoiser, z, grid.t(i), leaves, spec.params)
        g_eps, g_rest = node.vjp((down_e - gamma * up_e) * g_below)
        sums.add(1.0, g_rest)
        g_here = g_here + (down_z - gamma * up_z) * g_below + g_eps
        above = bdia_inverse_step(below, z, node.eps, levels[i], levels[i - 1], levels[i + 1], gamma)
        g_below, g_here = g_here, gamma * g_below
        below, z = z, above
        del node
    if n > 1 and log.isEnabledFor(logging.DEBUG):
        drift = float((z - z_T).norm() / z_T.norm().clamp_min(1e-30))
        log.debug("reversible BDIA: rebuilt z_T differs from the input by %.3g (relative)", drift)
    c_z, c_e = ddim_coefficients(levels[n], levels[n - 1])
    node = Node(denoiser, z_T, grid.t(n), leaves, spec.params)
    g_eps, g_rest = node.vjp(c_e * g_below)
    sums.add(1.0, g_rest)
    return g_here + c_z * g_below + g_eps, sums.sums


def reversible_bdia_sample(model, schedule, z_T: torch.Tensor, *, gamma: float, params=None, **cond) -> BdiaPair:
    """BDIA-DDIM sampling (as :func:`.samplers.bdia_sample`) whose backward pass rebuilds states exactly.

    Args:
        model, schedule, **cond: as for :func:`.samplers.bdia_sample`; conditioning tensors that
            require grad (e.g. ``encoder_hidden_states``) receive gradients (one inside a dict such as
            ``added_cond_kwargs`` is refused: it would get none).
        z_T: ``(B, C, h, w)`` initial noise (any shape for callables).
        gamma: BDIA's gamma in ``(0, 1]``.
        params: tensors to differentiate (default: the model's parameters that require grad; give
            them explicitly for a callable model that closes over tensors).

    Returns the pair ``(z_0, z_1)``, both differentiable. The backward pass makes ``N`` model calls
    with a vector-Jacobian product each (forward: ``N`` calls); memory does not grow with ``N``.
    """
    gamma = check_gamma(gamma, inverse=True)  # the backward pass inverts every BDIA step
    binding = bind(model, cond)
    denoiser = binding.denoiser()
    denoiser.check(z_T, "z_T")
    grid = as_schedule(schedule)
    spec = _Spec(binding, grid, gamma, model_parameters(binding, params))
    z0, z1 = _ReversibleBdia.apply(spec, z_T, *binding.tensors(), *spec.params)
    return BdiaPair(z0, z1)


def unrolled_bdia_sample(model, schedule, z_T: torch.Tensor, *, gamma: float, **cond) -> BdiaPair:
    """The same BDIA pass without ``no_grad``: autograd keeps every step (the baseline to compare with).

    Its arguments are checked as :func:`.samplers.bdia_sample` checks them (``gamma`` in [0, 1])."""
    gamma = check_gamma(gamma, inverse=False)
    denoiser, grid = prepare(model, schedule, z_T, "z_T", cond)
    return bdia_pass(denoiser, grid, z_T, gamma, caller="unrolled_bdia_sample")
