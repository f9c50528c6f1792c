"""Shared plumbing of the custom autograd functions: conditioning as inputs, model parameters, VJPs.

A custom ``torch.autograd.Function`` only sees gradients of tensors passed to ``apply``. The
functions here split the conditioning keywords into the tensors that require grad (passed as inputs)
and the rest, collect the model parameters to differentiate, and evaluate ``eps`` together with its
vector-Jacobian products at one state, which is the only place the backward passes touch the model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from .denoiser import Denoiser, as_denoiser


@dataclass
class Binding:
    """The model and every keyword of its :class:`Denoiser`, with the differentiable tensors named.

    Attributes:
        model: the eps model (never a ``Denoiser``).
        guidance_scale: classifier-free guidance weight.
        cond: all conditioning keywords (``encoder_hidden_states`` etc. included).
        grad_names: keys of ``cond`` whose tensors are differentiated (inputs of the Function).
        calls: model evaluations made through :meth:`denoiser` objects (forward and backward).
    """

    model: object
    guidance_scale: float
    cond: dict
    grad_names: tuple[str, ...]
    calls: list = field(default_factory=lambda: [0])

    def tensors(self) -> list[torch.Tensor]:
        return [self.cond[name] for name in self.grad_names]

    def denoiser(self, replacements: list[torch.Tensor] | None = None) -> Denoiser:
        """A fresh ``Denoiser`` with the differentiable tensors replaced (detached copies by default)."""
        cond = dict(self.cond)
        values = replacements if replacements is not None else [t.detach() for t in self.tensors()]
        cond.update(zip(self.grad_names, values, strict=True))
        return _Counted(self.model, self.calls, guidance_scale=self.guidance_scale, **cond)


class _Counted(Denoiser):
    def __init__(self, model, counter: list, **kwargs):
        super().__init__(model, **kwargs)
        self._counter = counter

    def __call__(self, z: torch.Tensor, t: int) -> torch.Tensor:
        self._counter[0] += 1
        return super().__call__(z, t)


def bind(model, cond: dict, grad_names=None) -> Binding:
    """``as_denoiser(model, **cond)`` kept in its parts, for the custom autograd functions only.

    A ``torch.autograd.Function`` must take the conditioning tensors it differentiates as inputs,
    and its backward pass rebuilds the denoiser around replacements of them
    (:meth:`Binding.denoiser`); a :class:`Denoiser` would hide them. Everything else gets its
    ``eps(z, t)`` from :func:`.denoiser.as_denoiser`. ``model`` is a raw model or a bound ``Denoiser``.

    ``grad_names=None`` picks the tensors of ``cond`` that require grad (autograd semantics);
    an explicit sequence names them (each must be a floating tensor in ``cond``).
    """
    if isinstance(model, Denoiser):
        denoiser = as_denoiser(model, **cond)  # a bound Denoiser takes no more conditioning
        model, cond = denoiser.model, denoiser.keywords
    cond = dict(cond)
    scale = cond.pop("guidance_scale", 1.0)
    if grad_names is None:
        grad_names = tuple(k for k, v in cond.items() if isinstance(v, torch.Tensor) and v.requires_grad)
        _refuse_nested_grad(cond)
    else:
        if isinstance(grad_names, str):
            grad_names = (grad_names,)
        grad_names = tuple(grad_names)
        for name in grad_names:
            value = cond.get(name)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(
                    f"grad_cond names {name!r}, which must be a floating-point conditioning tensor passed as a "
                    f"keyword; got {type(value).__name__ if name in cond else 'nothing'}"
                )
    Denoiser(model, guidance_scale=scale, **cond)  # validate the combination now, with clear errors
    return Binding(model, float(scale), cond, grad_names)


def _refuse_nested_grad(cond: dict) -> None:
    """A ValueError for a tensor that requires grad inside a conditioning dict, list or tuple (SDXL's
    ``added_cond_kwargs``): the custom autograd functions differentiate top-level tensors only, so its gradient
    would be dropped without a word."""
    if not torch.is_grad_enabled():
        return
    for key, value in cond.items():
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) \
            else ()
        for inner, item in items:
            if isinstance(item, torch.Tensor) and item.requires_grad:
                raise ValueError(
                    f"{key}[{inner!r}] requires grad, but the reversible and adjoint gradients reach only conditioning "
                    f"tensors passed as keywords of their own: pass it detached (.detach()), or differentiate it "
                    f"through unrolled_bdia_sample (plain autograd)")


def model_parameters(binding: Binding, params) -> list[torch.Tensor]:
    """The parameters to differentiate: ``params`` if given, else the module's that require grad."""
    if params is None:
        model = binding.model
        if isinstance(model, torch.nn.Module):
            return [p for p in model.parameters() if p.requires_grad]
        return []
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        out = list(params)
    except TypeError:
        raise TypeError(f"params must be None, a tensor or an iterable of tensors requiring grad (e.g. "
                        f"unet.parameters()), got {type(params).__name__}") from None
    for k, p in enumerate(out):
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"params[{k}] must be a floating-point tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"params[{k}] (shape {tuple(p.shape)}) does not require grad; call requires_grad_() on it")
    return out


class Node:
    """``eps(z, t)`` with its graph kept, for vector-Jacobian products at one state.

    ``leaves`` are the conditioning tensors the ``denoiser`` was built with (leaves requiring grad);
    ``params`` the model parameters to differentiate. One model forward here, one backward per
    :meth:`vjp`.
    """

    def __init__(self, denoiser: Denoiser, z: torch.Tensor, t: int, leaves: list[torch.Tensor],
                 params: list[torch.Tensor]):
        x = z.detach().requires_grad_(True)
        self.inputs = [x, *leaves, *params]
        with torch.enable_grad():
            self._eps = denoiser(x, t)
        self.eps = self._eps.detach()

    def vjp(self, v: torch.Tensor, *, retain: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(J_z^T v, [J_c^T v..., J_theta^T v...])``; unused inputs get zeros."""
        with torch.enable_grad():
            grads = torch.autograd.grad(self._eps, self.inputs, grad_outputs=v, retain_graph=retain,
                                        allow_unused=True)
        grads = [torch.zeros_like(inp) if g is None else g for g, inp in zip(grads, self.inputs, strict=True)]
        return grads[0], grads[1:]


class Accumulator:
    """Running weighted sums ``sum_k w_k g_k`` for a list of gradient tensors (conditioning or params)."""

    def __init__(self, like: list[torch.Tensor]):
        self.sums = [torch.zeros_like(t, memory_format=torch.preserve_format) for t in like]

    def add(self, weight: float, grads: list[torch.Tensor]) -> None:
        if weight == 0.0:
            return
        for total, g in zip(self.sums, grads, strict=True):
            total.add_(g.to(total.dtype), alpha=weight)


def needs_autograd(fn):
    """Run ``fn`` with autograd even when called under ``torch.inference_mode``: inference tensors
    among its arguments (the noise, the conditioning) become ordinary copies; the rest is unchanged."""
    def ordinary(value):
        return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*map(ordinary, args), **{k: ordinary(v) for k, v in kwargs.items()})

    return wrapper


def check_loss_and_gradients(caller: str, loss: float, grads, where: str, hint: str) -> None:
    """A NaN/inf loss or gradient is a ``FloatingPointError`` naming ``caller`` and ``where``
    (e.g. " at iteration 3"), not a silently NaN result; ``grads`` may hold ``None``."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"{caller}: the loss is {loss}{where}")
    if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
        raise FloatingPointError(f"{caller}: the gradient has NaN/inf values{where} (loss {loss:.6g}); {hint}")


def scalar_loss(value) -> torch.Tensor:
    """``loss(z0)``'s value as a 0-dim tensor, or a ``ValueError`` saying what came back instead."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"loss must return a scalar tensor, got {got}")
    return value.reshape(())


def single_backward(caller: str):
    """``once_differentiable`` for a custom Function's ``backward``, and a clear error where a double backward is
    asked for (``create_graph=True`` runs the backward with grad mode on): torch's own one would only come later,
    as "element 0 of tensors does not require grad" or a tensor "not used in the graph"."""
    def decorate(backward):
        inner = once_differentiable(backward)

        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(f"{caller}: double backward (create_graph=True through it) is not supported; its "
                                   "backward pass is a custom sweep, differentiable once")
            return inner(ctx, *grads)

        return wrapper

    return decorate
