"""Backend choice for the update ops: explicit request > device > dtype > availability.

Backends:
  ``torch``      the reference arithmetic on preallocated buffers (bit-identical to
                 ``reference.py``; the CPU default)
  ``reference``  ``reference.py``'s own update functions (allocates; the oracle itself)

An explicitly requested backend that cannot run raises ``BackendUnavailable`` saying why;
``auto`` never raises and falls back to ``torch``.
"""

from __future__ import annotations

import torch

BACKENDS = ("auto", "torch", "reference")


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(op: str, tensor: torch.Tensor, backend: str) -> str:
    """The backend that will run ``op`` on ``tensor``'s device and dtype."""
    check_backend_name(backend)
    if backend == "auto":
        return "torch"
    return backend


def available_backends() -> dict[str, str]:
    """Each backend with ``"available"`` or the reason it is not."""
    return {"torch": "available", "reference": "available"}
