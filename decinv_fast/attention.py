"""Attention backends for the VAE's mid-block self-attention, set for one call and restored.

diffusers VAEs attend over every latent pixel (4096 tokens at 512x512). ``"sdpa"`` uses
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU, no
tokens x tokens matrix); ``"xformers"`` uses xformers' memory-efficient kernel (CUDA only);
``"math"`` is the plain softmax(QK^T)V reference that materialises the full attention matrix.
``"auto"`` keeps the VAE's own processors (diffusers' default SDPA one, xformers, or whatever the
user set) and only replaces the plain math processor by SDPA for the call: a VAE already set up is
not touched at all, so concurrent calls on it cannot interfere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

ATTENTION = ("auto", "sdpa", "xformers", "math")


def check_attention(attention: str) -> None:
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")


def _processor(attention: str, device: torch.device):
    from diffusers.models import attention_processor as ap

    if attention in ("auto", "sdpa"):
        return ap.AttnProcessor2_0()
    if attention == "math":
        return ap.AttnProcessor()
    from diffusers.utils import is_xformers_available

    if not is_xformers_available():
        raise ValueError("attention='xformers' needs xformers installed: pip install 'decinv-fast[xformers]'")
    if device.type != "cuda":
        raise ValueError(f"attention='xformers' needs CUDA tensors; the VAE is on {device}")
    return ap.XFormersAttnProcessor()


def auto_processors(processors: dict) -> dict:
    """The processors ``"auto"`` runs for a VAE with ``processors`` (name -> processor): the plain math
    ones replaced by SDPA, every other kept (the planner traces the same)."""
    from diffusers.models import attention_processor as ap

    sdpa = ap.AttnProcessor2_0()
    return {name: sdpa if _materialises(p) else p for name, p in processors.items()}


def _materialises(processor) -> bool:
    """The plain math processor, which builds the whole tokens x tokens matrix."""
    from diffusers.models import attention_processor as ap

    return type(processor) is ap.AttnProcessor


@contextlib.contextmanager
def attention_backend(module: nn.Module | None, attention: str) -> Iterator[str | None]:
    """Set the attention processors of ``module`` for the block (every one to ``attention``; with
    ``"auto"`` only the plain math ones, to SDPA), verify it took, and put the original processors
    back afterwards (the user's VAE is left as it was).

    Yields the processor class name in use (names joined by ``+`` when ``"auto"`` keeps several
    kinds), or ``None`` when the model has no attention layers (AutoencoderTiny, callables).
    """
    check_attention(attention)
    if module is None or not getattr(module, "attn_processors", None):
        yield None
        return
    original = dict(module.attn_processors)
    if attention == "auto" and not any(_materialises(p) for p in original.values()):
        yield _names(original.values())
        return
    if attention == "auto":
        wanted = auto_processors(original)
    else:  # an explicit choice sets every one
        chosen = _processor(attention, next(module.parameters()).device)
        wanted = dict.fromkeys(original, chosen)
    expected = _names(wanted.values())  # before set_attn_processor, which empties the dict it is given
    module.set_attn_processor(wanted)
    try:
        active = _names(module.attn_processors.values())
        if active != expected:
            raise RuntimeError(f"attention={attention!r}: the VAE kept other processors ({active})")
        yield active
    finally:
        module.set_attn_processor(original)


def _names(processors) -> str:
    """The processor classes in use, ``+``-joined in sorted order."""
    return "+".join(sorted({type(p).__name__ for p in processors}))
