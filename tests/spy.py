"""A VAE's codec that records what the encoder is shown, for tests of what the iteration encodes."""

import torch

from decinv_fast.adapters import as_adapter


def spying_codec(vae) -> tuple:
    """``(encode, decode, seen)``: ``vae``'s encoder and decoder as an ``invert`` pair, every encoder
    input appended (cloned) to the list ``seen``."""
    adapter = as_adapter(vae)
    seen: list[torch.Tensor] = []

    def encode(pixels):
        seen.append(pixels.clone())
        return adapter.encode(pixels)

    return encode, (lambda z: adapter.decode(z, 1)), seen
