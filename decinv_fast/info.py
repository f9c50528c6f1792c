"""``decinv_fast.info()``: versions and which update backends can run here, and why not."""

from __future__ import annotations

import platform

import torch

from ._dispatch import available_backends


def info() -> dict:
    """A dict of versions and backend availability (each backend: ``"available"`` or the reason)."""
    import diffusers

    return {
        "decinv_fast": __import__("decinv_fast").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "diffusers": diffusers.__version__,
        "backends": available_backends(),
    }
