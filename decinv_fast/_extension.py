"""The optional compiled extension ``decinv_fast._C``: imported lazily, its ImportError kept."""

from __future__ import annotations

import functools
import importlib

NAME = f"{__package__}._C"
BUILD = "pip install --no-build-isolation -e . in the source tree, torch installed first"
NOT_BUILT = ("not built: setup.py builds it where nvcc and a CUDA build of torch are present; to build it (or be "
             f"told why not): DECINV_BUILD_CUDA=1 {BUILD}")
NO_LOAD = f"built but does not load (built for another torch, Python or CUDA?); rebuild it: {BUILD}"


@functools.lru_cache(maxsize=1)
def _load():
    try:
        module = importlib.import_module(NAME)  # registers the torch.library ops' CUDA kernels
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == NAME
        return None, f"{NOT_BUILT if missing else NO_LOAD} ({type(exc).__name__}: {exc})"
    return module, None


def extension():
    """The extension module, or ``None`` if it is not built or cannot load."""
    return _load()[0]


def extension_error() -> str | None:
    """Why the extension cannot be used, and what to do about it (``None`` when it loaded)."""
    return _load()[1]
