"""Guided generation by optimising the initial noise (and/or the conditioning) through the sampler.

    min_{z_T, c}  loss(sample(z_T, c))

with Adam on ``z_T`` (and the named conditioning tensors), the gradient of the whole sampling run
coming from one of:

- ``"adjoint"``: AdjointDEIS over the exponential-integrator sampler (:mod:`.adjoint`), O(1) memory
  in the number of steps with ``states="recompute"``;
- ``"reversible"``: exact gradients of a BDIA-DDIM run rebuilt backwards (:mod:`.reversible`);
- ``"autograd"``: autograd through the unrolled DDIM sampler (memory grows with the steps; the
  reference).

This is the guided-generation use of AdjointDEIS (Blasingame & Liu, 2024): e.g. make the sample
match a target image under a perceptual or pixel loss on the decoded image.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..options import check_flag, is_int, is_real, tensor_hint
from ._autodiff import check_loss_and_gradients, needs_autograd, scalar_loss
from .adjoint import adjoint_sample
from .checks import BDIA_GAMMA, check_callback, check_state, one_line
from .ei import ei_sample
from .reversible import reversible_bdia_sample
from .schedule import as_schedule

log = logging.getLogger(__name__)

METHODS = ("adjoint", "reversible", "autograd")
# the sampler options each method takes, with their defaults (an option given to a method that does not use it
# is refused, as invert refuses options of other methods)
METHOD_OPTIONS = {"adjoint": {"order": 1, "states": "recompute"}, "reversible": {"gamma": BDIA_GAMMA}, "autograd": {}}


@dataclass(repr=False)
class NoiseOptimization:
    """What :func:`optimize_noise` found.

    Attributes:
        z_T: ``(B, C, h, w)`` the optimised initial noise (detached).
        cond: ``{name: tensor}`` the optimised conditioning tensors (detached; empty if none).
        z0: the sample of the optimised ``z_T`` / ``cond`` (detached).
        losses: the loss before every update, then the final loss (``iterations + 1`` floats).
        seconds: wall time of the whole optimisation.
        method: ``"adjoint"``, ``"reversible"`` or ``"autograd"``.
    """

    z_T: torch.Tensor
    cond: dict
    z0: torch.Tensor
    losses: list
    seconds: float
    method: str

    def __repr__(self) -> str:
        """One line: the method, shapes and dtypes, the first and final loss (not every tensor in full)."""
        return one_line("NoiseOptimization", method=self.method, z_T=self.z_T, cond=self.cond,
                        first_loss=self.losses[0], final_loss=self.losses[-1], iterations=len(self.losses) - 1,
                        seconds=self.seconds)


def _check(method, iterations, lr, optimize, cond) -> tuple[str, ...]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not is_int(iterations) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}{tensor_hint(iterations)}")
    if not is_real(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}{tensor_hint(lr)}")
    if isinstance(optimize, str):
        names = (optimize,)
    elif isinstance(optimize, Sequence) and all(isinstance(name, str) for name in optimize):
        names = tuple(optimize)
    else:
        raise TypeError(f"optimize must be 'z_T', a conditioning keyword or a sequence of them, got {optimize!r}")
    if not names:
        raise ValueError("optimize must name at least one of 'z_T' and the conditioning keywords")
    if len(set(names)) != len(names):
        raise ValueError(f"optimize names {sorted({n for n in names if names.count(n) > 1})} more than once: {names}")
    for name in names:
        if name == "z_T":
            continue
        value = cond.get(name)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"optimize names {name!r}, which must be 'z_T' or a floating-point conditioning tensor "
                             f"passed as a keyword")
    return names


def _sampler_options(method: str, **given) -> dict:
    """The sampler options of ``method`` (its defaults where not given; the sampler checks their values); ``given``
    holds the options the caller passed (not ``None``), and one that ``method`` does not use is an error naming it."""
    unused = sorted(name for name, value in given.items() if value is not None and name not in METHOD_OPTIONS[method])
    if unused:
        takes = {m: sorted(o) for m, o in METHOD_OPTIONS.items() if o}
        raise TypeError(f"option(s) {unused} are not used by method={method!r} (sampler options by method: {takes})")
    defaults = METHOD_OPTIONS[method]
    return {name: default if given[name] is None else given[name] for name, default in defaults.items()}


@needs_autograd
def optimize_noise(model, schedule, z_T: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor], *,
                   method: str = "adjoint", iterations: int = 20, lr: float = 0.05,
                   optimize: str | Sequence[str] = ("z_T",), gamma: float | None = None, order: int | None = None,
                   states: str | None = None, keep_norm: bool = False,
                   callback: Callable[[int, float], None] | None = None, **cond) -> NoiseOptimization:
    """Optimise ``z_T`` (and/or conditioning) so that ``loss(sample)`` decreases.

    Args:
        model, schedule, **cond: as for :func:`.samplers.ddim_sample` (diffusers UNet, callable
            ``eps(z, t, **cond)`` or ``Denoiser``; ``Schedule`` or diffusers scheduler; conditioning).
        z_T: ``(B, C, h, w)`` starting noise (not modified).
        loss: ``loss(z0) -> scalar tensor`` on the sampled latent (decode inside it for an image loss).
        method: ``"adjoint"``, ``"reversible"`` or ``"autograd"`` (module docstring).
        iterations: Adam steps.
        lr: Adam learning rate.
        optimize: ``"z_T"`` and/or names of conditioning tensors in ``cond`` (each once).
        gamma: BDIA's gamma for ``"reversible"`` (in (0, 1]; default 0.96).
        order, states: AdjointDEIS options for ``"adjoint"`` (:func:`.adjoint.adjoint_sample`; default 1 and
            ``"recompute"``). A sampler option given to a method that does not use it is a ``TypeError``.
        keep_norm: after every step rescale each sample's ``z_T`` to norm ``sqrt(C h w)``, keeping it
            on the shell where Gaussian noise lives. Only an optimised ``z_T`` is rescaled: when
            ``optimize`` leaves ``z_T`` out, ``z_T`` is returned as given.
        callback: ``callback(iteration, loss)`` after every loss evaluation.

    Returns a :class:`NoiseOptimization`; the model's parameters are not changed. A NaN/inf loss or
    gradient raises ``FloatingPointError`` naming the iteration, before the step that would spread it;
    a NaN/inf final loss (after the last step) names the final evaluation.
    """
    names = _check(method, iterations, lr, optimize, cond)
    options = _sampler_options(method, gamma=gamma, order=order, states=states)
    check_state("z_T", z_T)
    check_flag("keep_norm", keep_norm)
    check_callback(callback)
    if not callable(loss):
        raise TypeError(f"loss must be a callable loss(z0) -> scalar tensor, got {type(loss).__name__}")
    z = z_T.detach().clone().requires_grad_("z_T" in names)
    live = {k: (v.detach().clone().requires_grad_(True) if k in names else v) for k, v in cond.items()}
    variables = ([z] if "z_T" in names else []) + [live[k] for k in names if k != "z_T"]
    optimizer = torch.optim.Adam(variables, lr=lr)
    schedule = as_schedule(schedule)  # once, not at every sampling pass

    def sample(z_now: torch.Tensor) -> torch.Tensor:
        if method == "adjoint":
            return adjoint_sample(model, schedule, z_now, params=(), **options, **live)
        if method == "reversible":
            return reversible_bdia_sample(model, schedule, z_now, params=(), **options, **live).z0
        return ei_sample(model, schedule, z_now, order=1, **live)

    def evaluate() -> torch.Tensor:
        return scalar_loss(loss(sample(z)))

    losses, start = [], time.perf_counter()
    with torch.enable_grad():
        for it in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            value = evaluate()
            losses.append(float(value.detach()))
            value.backward(inputs=variables)  # not into the model's weights, even if they require grad
            # before the step: the iterate stays the last good one
            check_loss_and_gradients("optimize_noise", losses[-1], [v.grad for v in variables],
                                     f" at iteration {it}", "try a smaller lr or a loss without singular points")
            optimizer.step()
            if keep_norm and "z_T" in names:
                with torch.no_grad():
                    flat = z.flatten(1)
                    factor = math.sqrt(flat.shape[1]) / flat.norm(dim=1).clamp_min(1e-12)
                    z.mul_(factor.view(-1, *[1] * (z.dim() - 1)))
            if callback is not None:
                callback(it, losses[-1])
            log.debug("optimize_noise %s: iteration %d loss %.6g", method, it, losses[-1])
    with torch.no_grad():
        z0 = sample(z)
        losses.append(float(scalar_loss(loss(z0))))
    check_loss_and_gradients("optimize_noise", losses[-1], [], " after the last step (the final loss)",
                             "try a smaller lr or a loss without singular points")
    if callback is not None:
        callback(iterations, losses[-1])
    return NoiseOptimization(z.detach(), {k: live[k].detach() for k in names if k != "z_T"}, z0.detach(), losses,
                             time.perf_counter() - start, method)
