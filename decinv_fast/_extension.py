"""The optional compiled extension ``decinv_fast._C``: imported lazily, its ImportError kept."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _load():
    try:
        from . import _C  # noqa: F401  (registers the torch.library ops)
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


def extension():
    """The extension module, or ``None`` if it is not built or cannot load."""
    return _load()[0]


def extension_error() -> str | None:
    """Why the extension cannot be used (``None`` when it loaded)."""
    return _load()[1]
