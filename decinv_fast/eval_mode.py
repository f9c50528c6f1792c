"""The VAE runs in eval mode for a call of ``invert``, ``encode`` or ``decode``, whatever mode it is in.

A module built directly (``AutoencoderKLWan(...)``) rather than loaded with ``from_pretrained`` is in train
mode, where dropout draws random masks on every pass: the same call gave other latents each time, and a batch
other latents than its videos one by one. Inversion reads the VAE as the map it is when it generates, so every
submodule is put in eval mode for the call and its own mode given back afterwards (the user's VAE is left as it
was, as with its attention processors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Every submodule of ``module`` in eval mode for the block, each one's ``training`` flag restored after
    (also when the block raises). ``None`` (a callable pair): nothing to do."""
    modes = [] if module is None else [(m, m.training) for m in module.modules() if m.training]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
