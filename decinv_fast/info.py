"""``decinv_fast.info()``: versions, which update backends can run here (and why not), and which VAE
classes the installed diffusers has."""

from __future__ import annotations

import platform

import torch

from ._dispatch import available_backends


def info() -> dict:
    """A dict of versions, backend availability (each backend: ``"available"`` or the reason) and the VAE
    classes ``invert`` takes (each: ``"available"``, or why not: a class newer than the installed diffusers)."""
    import diffusers

    from .adapters import IMAGE_VAE_KINDS, VIDEO_VAE_KINDS

    return {
        "decinv_fast": __import__("decinv_fast").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "diffusers": diffusers.__version__,
        "backends": available_backends(),
        "vae_classes": {kind: "available" if getattr(diffusers, kind, None) else
                        f"not in diffusers {diffusers.__version__}" for kind in IMAGE_VAE_KINDS + VIDEO_VAE_KINDS},
    }
