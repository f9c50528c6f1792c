r"""AdjointDEIS: gradients through diffusion sampling by solving the adjoint ODE (Blasingame & Liu, 2024).

Derived here from scratch; the printed formulas of the paper's versions disagree by a factor ``alpha``
and the official code does not run, so the result is proven by convergence order in
``tests/test_adjoint.py`` (measured slopes in ``docs/adjoint_gradients.md``), not by citation.

**Forward problem** (:mod:`.ei`). ``a = sqrt(alphabar)``, ``s = sqrt(1 - alphabar)``,
``lambda = log(a / s)``, ``rho = s / a``, denoiser ``D(z, t) = (z - s eps(z, t)) / a``. In
``u = z / m`` with ``m = a rho^k`` sampling integrates, from ``lambda_N`` up to ``lambda_0``,

    du/dlambda = F(u, lambda) = k e^{k lambda} D(m u, t(lambda), c; theta)   (+ dW_u, SDE)   (U)

with ``k = 1`` for the probability-flow ODE and ``k = 2`` for the diffusion SDE; the loss is
``L(z_0)``. The change of variable integrates the linear drift exactly (exponential integrator).

**Adjoint ODE.** Let ``B(lambda) = dL/du(lambda)`` (shaped like ``z``; ``B = m dL/dz``) and
``J_D = dD/dz``, ``J_c = dD/dc`` along the sampled path. A perturbation of ``u`` at ``lambda``
reaches ``lambda_0`` through the linearised flow, and ``dF/du = k e^{k lambda} m J_D = k a J_D``
(because ``e^{k lambda} m = a``), so

    dB/dlambda = -k a J_D^T B,     B(lambda_0) = m_0 dL/dz_0,     dL/dz_T = B(lambda_N) / m_N   (B)

The SDE noise enters additively (it does not depend on ``u``), so with the noise path fixed its
adjoint is this same ODE, with ``k = 2``: no stochastic term. A perturbation of ``c`` (or
``theta``) adds ``dF/dc dc dlambda`` to ``du``; carried to ``lambda_0``:

    dL/dc = int_{lambda_N}^{lambda_0} k e^{k lambda} J_c^T B dlambda.                      (C)

In ``eps`` terms, ``a J_D^T B = B - s J_eps^T B`` and ``J_c(D)^T B = -(s / a) J_c(eps)^T B``: one
model forward and one vector-Jacobian product per node.

The alpha factor. In the usual variables ``A_z = dL/dz = B / m``, (B) for the ODE becomes
``dA_z/dlambda = -(dlog s/dlambda) A_z - a J_D^T A_z``; the exact transfer of its linear part over a
step is ``s_i / s_j``, and the integrand keeps one factor ``a`` of ``J_D``. Writing the step in
``eps`` instead (``k = 1``, ``lambda_j < lambda_i``):
``A_z(lambda_j) = (a_i / a_j) A_z(lambda_i) - (1 / a_j) int_{lambda_j}^{lambda_i} a_l s_l J_eps^T
A_z dlambda``: the integrand carries ``a s`` (check: for ``eps = z / s``, ``A_z ~ 1 / s``).
Dropping one ``a`` changes the limit; the order tests catch that (tested with one extra ``a``).

**Discretisation** on the schedule's states, ``lambda_N < ... < lambda_1 < lambda_0`` (state 0
may be noise-free, ``lambda_0 = inf``, and has no model timestep). Write (B) as
``B(lambda_j) = B(lambda_{j-1}) + int_{lambda_j}^{lambda_{j-1}} k e^{k l} [m J_D^T B](l) dl``: the
exponential weight is integrated exactly and the bracket, which varies slowly, is frozen or
interpolated. Default (``scheme="transpose"``): freeze ``m J_D^T`` at the node ``z_j`` where the
sampler evaluated the model, and ``B`` at the end already known:

    AdjointDEIS-1:   B_j = B_{j-1} + (e^{k lambda_{j-1}} - e^{k lambda_j}) m_j J_D(z_j)^T B_{j-1}       (T1)
    AdjointDEIS-2M:  B_j = B_{j-1} + m_j J_D(z_j)^T (P_{j-1} B_{j-1} + Q_{j-2} B_{j-2})                (T2)
    dL/dc           += J_c(D_j)^T (same cotangent, over m_j)                                          (TC)

for ``j = 1..N``, where ``P_{j-1}`` / ``Q_{j-2}`` are the weights (:func:`.ei.exp_weights`) with which
``D_j`` entered the sampler's steps ``j -> j-1`` (current node) and ``j-1 -> j-2`` (previous node).
Each factor is frozen with an O(h) error, so the local error is O(h^2) for (T1); (T2) is the same
quadrature the 2M sampler uses, transposed. These are exactly the transposes of the sampler's steps
(the step onto ``lambda_0 = inf`` written in ``z``): with the forward states cached, the result
equals autograd through the sampler up to rounding (tested to 1e-12), and because the sampler's
Jacobian converges at its order, the gradient converges like ``1/N`` and ``1/N^2`` (tested:
slopes in the docs). ``eps``-form: ``m J_D^T v = rho (v - s J_eps^T v)``; one model forward and one
vector-Jacobian product per node, ``N`` nodes. In code the sweep runs in ``g_j = B_j / m_j = dL/dz_j``.

``scheme="explicit"`` is the textbook optimise-then-discretise step, in the same variables: a fresh
cotangent at the start of each step, ``G_i = a_i J_D(z_i)^T B_i``,

    B_1 = m_1 (c_z dL/dz_0 + J_eps(z_1)^T (c_eps dL/dz_0))       (T0: transpose of step 1 -> 0)
    B_{i+1} = B_i + k h_i G_i          (E1),     B_{i+1} = B_i - k (w_i G_i + v_i G_{i-1})     (E2)

for ``i = 1..N-1`` (``h_i = lambda_i - lambda_{i+1}``, ``(w_i, v_i) = ab2_weights(lambda_{i-1},
lambda_i, lambda_{i+1})``), and (C) by the same nodes with the weight ``k e^{k lambda}`` integrated
exactly. Same orders, but not equal to autograd with cached states, and less accurate where ``J_D``
is large (``a J_D ~ 1`` at low noise makes ``B`` vary like ``e^{-k lambda}``, which (T1)
integrates exactly and (E1) does not): at N = 20 on the SDE test problem it is about 50 % off. On
a diffusers DDIM grid (uniform in ``t``, ``alphabar_0 = 1``) the step next to ``t = 0`` keeps a log-SNR
gap of about ``log 2 / 2`` however large ``N`` is, so it converges much more slowly there (measured once,
on SD's table: 70-90 % off at N = 5-40, 28 % at N = 320; not a test); use ``"transpose"`` on such grids.

Why the data-prediction form: an ``eps``-form explicit step (in ``y = z / a`` and ``rho``) leaves
the large, nearly linear part ``eps ~ z / s`` of high noise to the quadrature; on the ODE test
problem its AdjointDEIS-1 error at N = 20 was 51 % against 9 % here (same order).

**States.** ``states="recompute"`` (O(1) memory in N) rebuilds the states upwards alongside the
sweep, with the nodes' own ``D`` (no extra call):

    u_{i+1} = u_i + (int_{lambda_i}^{lambda_{i+1}} k e^{k l} p_D(l) dl) - Delta W_u          (S)

(``p_D`` the order-1 / 2 interpolant of ``D``; ``Delta W_u`` the recorded noise of the sampling
step ``i+1 -> i``, zero for the ODE; the first move ``z_0 -> z_1`` inverts the step ``1 -> 0``
with ``eps(z_0, t_1)``, as DDIM inversion does: one extra call). After node ``i`` has evaluated
``eps_i`` at the predicted ``z_i``, a first-order step is solved once more for ``z_i``,

    z_i = (z_{i-1} - c_eps eps_i - c_xi xi) / c_z                                            (S')

a free fixed-point pass: the rebuilt path then differs from the forward pass by O(h^2) instead of
O(h), and the gradient from autograd's by about as much (measured slopes near -2 for the ODE and
the SDE; without the pass the SDE's were only -0.3 to -0.9, its reversed noise feeding the error).
2M steps need no pass (their rebuilt states are already O(h^3) from the forward ones). The VJP of
node ``i`` is still taken at the predicted state. ``states="cache"`` keeps the forward pass's ``N - 1``
intermediate states instead (``N - 1`` latents; still no graphs).

Cost: ``N`` model calls forward; backward ``N`` forward+backward pairs (``"transpose"``; ``N - 1``
and one more backward for ``"explicit"``), and one forward-only call with ``"recompute"``.
Autograd through the sampler needs ``N`` calls and one backward each, but keeps every call's
activations until its backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._autodiff import (
    Binding,
    bind,
    check_loss_and_gradients,
    model_parameters,
    needs_autograd,
    scalar_loss,
    single_backward,
)
from .adjoint_solver import SCHEMES, solve_adjoint
from .checks import check_state, one_line
from .ei import StepNoise, forward_pass, setup_pass
from .schedule import Schedule

STATES = ("recompute", "cache")


@dataclass
class _Spec:
    binding: Binding
    grid: Schedule
    order: int
    noise: StepNoise | None
    states: str
    params: list
    scheme: str


class _AdjointSample(torch.autograd.Function):
    """``z_0 = sample(z_T, c..., theta...)``; the backward pass is the AdjointDEIS sweep."""

    @staticmethod
    def forward(ctx, spec: _Spec, z_T: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        cache = {} if spec.states == "cache" else None
        n = spec.grid.num_steps

        def keep(i: int, z: torch.Tensor) -> None:
            if 1 <= i < n:
                cache[i] = z

        z0 = forward_pass(spec.binding.denoiser(), spec.grid, z_T, spec.order, spec.noise,
                          keep if cache is not None else None)
        # The cached states go through save_for_backward, not onto ctx: autograd frees them with the graph
        # (after a backward without retain_graph) and keeps them for a second backward through a kept graph.
        n_cond = len(spec.binding.grad_names)
        ctx.spec, ctx.n_cond, ctx.cache_keys = spec, n_cond, None if cache is None else sorted(cache)
        ctx.save_for_backward(z_T, z0, *inputs[:n_cond], *(cache[i] for i in ctx.cache_keys or ()))
        return z0

    @staticmethod
    @single_backward("adjoint_sample")
    def backward(ctx, grad_z0: torch.Tensor):
        spec = ctx.spec
        z_T, z0, *rest = ctx.saved_tensors
        cond_values, states = rest[:ctx.n_cond], rest[ctx.n_cond:]
        cache = None if ctx.cache_keys is None else dict(zip(ctx.cache_keys, states, strict=True))
        grad_zT, grad_cond, grad_params = solve_adjoint(spec.binding, spec.grid, spec.order, spec.noise, z_T, z0,
                                                        grad_z0, cond_values, spec.params, cache, spec.scheme)
        return (None, grad_zT, *grad_cond, *grad_params)


def check_states(states) -> str:
    if states not in STATES:
        raise ValueError(f"states must be one of {STATES} (recompute: O(1) memory; cache: keep N-1 states), "
                         f"got {states!r}")
    return states


def check_scheme(scheme) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES} (see decinv_fast.diffusion.adjoint), got {scheme!r}")
    return scheme


def adjoint_sample(model, schedule, z_T: torch.Tensor, *, order: int = 1, states: str = "recompute", noise=None,
                   params=None, scheme: str = "transpose", **cond) -> torch.Tensor:
    """Sample ``z_0`` from ``z_T`` with the exponential integrator of ``order``; differentiable by AdjointDEIS.

    Gradients reach ``z_T``, every conditioning tensor in ``cond`` that requires grad (e.g.
    ``encoder_hidden_states``) and ``params`` (default: the model's parameters that require grad;
    pass them explicitly for a callable model). They approximate the gradients of the exact ODE / SDE
    flow to O(N^-order) (see the module docstring); with ``states="cache"`` and the default scheme
    they are also the gradients of this discrete sampler (autograd's, up to rounding).

    Args:
        model, schedule, **cond: as for :func:`.samplers.ddim_sample`.
        z_T: ``(B, C, h, w)`` initial noise (any shape for callables).
        order: 1 (AdjointDEIS-1 over DDIM) or 2 (AdjointDEIS-2M over the 2M sampler).
        states: ``"recompute"`` (O(1) memory in ``N``) or ``"cache"`` (keeps ``N - 1`` states).
        noise: ``None`` (probability-flow ODE) or the SDE's recorded noise: an ``int`` seed
            (regenerated in the backward pass, O(1) memory) or ``(N, *z_T.shape)`` (see :class:`.ei.StepNoise`).
        params: iterable of tensors requiring grad, or ``None``.
        scheme: ``"transpose"`` (T1 / T2) or ``"explicit"`` (E1 / E2) adjoint steps.

    Returns ``z_0`` shaped like ``z_T``; ``backward`` runs one adjoint sweep (double backward unsupported).
    """
    return _apply(bind(model, cond), schedule, z_T, order, states, noise, params, scheme)


def _apply(binding: Binding, schedule, z_T, order, states, noise, params, scheme) -> torch.Tensor:
    states, scheme = check_states(states), check_scheme(scheme)
    _, grid, order, steps_noise = setup_pass(binding.denoiser(), schedule, z_T, order, noise, {})
    params = model_parameters(binding, params)
    spec = _Spec(binding, grid, order, steps_noise, states, params, scheme)
    return _AdjointSample.apply(spec, z_T, *binding.tensors(), *params)


@dataclass(repr=False)
class AdjointGradients:
    """What :func:`adjoint_gradients` returns.

    Attributes:
        loss: the loss at the sampled ``z0`` (0-dim, detached).
        z0: ``(B, C, h, w)`` the sample.
        z_T: ``dL/dz_T``, shaped like ``z_T``.
        cond: ``{name: dL/dc}`` for the names in ``grad_cond``.
        params: ``dL/dtheta`` for each tensor in ``params`` (empty tuple if none).
        model_calls: model evaluations, forward and backward passes together.
    """

    loss: torch.Tensor
    z0: torch.Tensor
    z_T: torch.Tensor
    cond: dict
    params: tuple
    model_calls: int

    def __repr__(self) -> str:
        """One line: the loss, shapes and dtypes (the dataclass default would print every tensor)."""
        return one_line("AdjointGradients", loss=float(self.loss), z0=self.z0, z_T=self.z_T, cond=self.cond,
                        params=self.params, model_calls=self.model_calls)


@needs_autograd
def adjoint_gradients(model, schedule, z_T: torch.Tensor, loss, *, order: int = 1, states: str = "recompute",
                      noise=None, grad_cond=(), params=None, scheme: str = "transpose", **cond) -> AdjointGradients:
    """Gradients of ``loss(z0)`` w.r.t. ``z_T``, the conditioning tensors ``grad_cond`` and ``params``.

    ``loss`` maps the sample ``z0`` (``(B, C, h, w)``) to a scalar tensor; it may decode ``z0``
    with a VAE first (it is differentiated by ordinary autograd). ``grad_cond`` names keywords of
    ``cond`` (e.g. ``("encoder_hidden_states",)``); ``params`` is ``None`` (no parameter gradients)
    or an iterable of tensors requiring grad (e.g. ``unet.parameters()`` after ``requires_grad_()``).
    The other arguments are those of :func:`adjoint_sample`. A NaN/inf loss or gradient raises
    ``FloatingPointError``.
    """
    if not callable(loss):
        raise TypeError(f"loss must be a callable loss(z0) -> scalar tensor, got {type(loss).__name__}")
    check_state("z_T", z_T)  # before requires_grad_, which refuses integer tensors in its own words
    binding = bind(model, cond, grad_cond)
    leaves = [t.detach().requires_grad_(True) for t in binding.tensors()]
    binding = Binding(binding.model, binding.guidance_scale, {**binding.cond, **dict(zip(binding.grad_names, leaves,
                      strict=True))}, binding.grad_names)
    params = [] if params is None else model_parameters(binding, params)
    start = z_T.detach().requires_grad_(True)
    inputs = [start, *leaves, *params]
    with torch.enable_grad():
        z0 = _apply(binding, schedule, start, order, states, noise, params, scheme)
        value = scalar_loss(loss(z0))
        grads = torch.autograd.grad(value, inputs, allow_unused=True)
    check_loss_and_gradients("adjoint_gradients", float(value.detach()), grads, "",
                             "the loss or the model has a singular point there")
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]
    n_cond = len(leaves)
    return AdjointGradients(value.detach(), z0.detach(), grads[0],
                            dict(zip(binding.grad_names, grads[1:1 + n_cond], strict=True)),
                            tuple(grads[1 + n_cond:]), binding.calls[0])
