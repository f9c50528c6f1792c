"""Backend choice for the update ops: explicit request > device > dtype > availability.

Backends (each implements ``adam``, ``fsm`` and ``km`` with the same arguments):
  ``cuda``       the compiled extension ``decinv_fast._C`` (``csrc/``): CUDA tensors only
  ``triton``     Triton kernels (``kernels/``): CUDA tensors, or CPU tensors under the Triton
                 interpreter (``TRITON_INTERPRET=1``, used by the tests)
  ``torch``      eager tensor ops on preallocated buffers, bit-identical to ``reference.py``
  ``reference``  ``reference.py``'s own update functions (allocates; the oracle itself)

``auto`` picks cuda > triton > torch for CUDA tensors and torch on the CPU; it never raises.
An explicitly requested backend that cannot run raises :class:`BackendUnavailable` saying why.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "cuda", "triton", "torch", "reference")
# dtypes each compiled backend implements (fp64 runs on torch/reference only)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc}); pip install 'decinv-fast[triton]'"
    return None


def backend_problem(backend: str, tensor: torch.Tensor) -> str | None:
    """Why ``backend`` cannot run on ``tensor`` (``None`` if it can)."""
    if backend in ("torch", "reference"):
        return None
    if tensor.dtype not in KERNEL_DTYPES:
        return f"the {backend} kernels take {KERNEL_DTYPES}, not {tensor.dtype}"
    if backend == "triton":
        if _triton_import_error() is not None:
            return _triton_import_error()
        if not (tensor.device.type == "cuda" or (tensor.device.type == "cpu" and triton_interpreting())):
            return f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on the CPU); these are on {tensor.device}"
        from .ops import _triton

        if tensor.dim() == 2 and tensor.shape[0] > _triton.MAX_BATCH:  # (B, n): auto falls back to torch
            return f"the Triton kernels take at most {_triton.MAX_BATCH} samples per call, not {tensor.shape[0]}"
        return None
    from ._extension import extension_error

    if extension_error() is not None:
        return f"the compiled extension decinv_fast._C is unavailable: {extension_error()}"
    if tensor.device.type != "cuda":
        return f"the CUDA extension needs CUDA tensors; these are on {tensor.device}"
    return extension_launch_problem(tensor.device.index or 0)


@functools.cache
def extension_launch_problem(device_index: int) -> str | None:
    """Whether the extension's kernels run on this GPU: built for other architectures (default
    ``DECINV_CUDA_ARCHS=80;90``, no PTX), a launch fails with "no kernel image". One launch on a
    one-element problem per device and process tells; ``auto`` then falls back to Triton."""
    try:
        probe_launch(torch.device("cuda", device_index))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"its kernels do not launch on cuda:{device_index} ({first}); rebuild for this GPU with "
                "DECINV_CUDA_ARCHS (e.g. '86' or '8.9+PTX', see setup.py) or use backend='triton'")
    return None


def probe_launch(device: torch.device) -> None:
    """One fused forward step of the extension on a 1 x 1 problem on ``device`` (raises if it cannot)."""
    one = lambda dtype=torch.float32: torch.zeros(1, 1, dtype=dtype, device=device)  # noqa: E731
    torch.ops.decinv_fast.fsm_residual_step(one(), one(), one(), one().view(1), one(), one(torch.int64).view(1), None)
    if not torch.cuda.is_current_stream_capturing():
        torch.cuda.synchronize(device)


def resolve_backend(op: str, tensor: torch.Tensor, backend: str) -> str:
    """The backend that will run ``op`` on ``tensor``'s device and dtype."""
    check_backend_name(backend)
    if backend == "auto":
        if tensor.device.type == "cuda":
            for candidate in ("cuda", "triton"):
                if backend_problem(candidate, tensor) is None:
                    return candidate
        return "torch"
    problem = backend_problem(backend, tensor)
    if problem is not None:
        raise BackendUnavailable(f"{op}: backend={backend!r} cannot run: {problem}")
    return backend


def available_backends() -> dict[str, str]:
    """Each backend with ``"available"`` or the reason it is not (for CUDA fp32 tensors)."""
    from ._extension import extension_error

    triton = _triton_import_error() or "available"
    if triton == "available" and not torch.cuda.is_available():
        triton = "available under TRITON_INTERPRET=1 only (no CUDA device)" if triton_interpreting() \
            else "installed, but no CUDA device (set TRITON_INTERPRET=1 to run it on the CPU)"
    cuda = extension_error() or "available"
    if cuda == "available" and not torch.cuda.is_available():
        cuda = "built and loaded, but no CUDA device to run it on"
    elif cuda == "available":
        cuda = extension_launch_problem(torch.cuda.current_device()) or "available"
    return {"cuda": cuda, "triton": triton, "torch": "available", "reference": "available"}
