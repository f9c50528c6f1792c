"""The decoding as the saved image shows it (option ``clip_aware``).

A pipeline saves ``clamp(D(z*), -1, 1)`` rounded to 8 bits, so a pixel the image holds at ``+1``
(``-1``) says only that the decoding there was *at least* 1 (at most -1). Comparing ``D(z)`` with
it directly pulls every decoding that overshoots a clipped pixel back to the range's end: a
residual the true latent has too, which moves the fixed point of ``E(D(z)) = E(x)`` and the pixel
error's minimum away from ``z*``. With ``clip_aware`` the iteration compares, and shows the encoder,
the decoding clipped the way the image was, but only at the pixels the image holds at an end of the
range: there a decoding beyond the end counts as a match, one inside it as a residual. Pixels
inside the range, and values beyond ``[-1, 1]`` (an unclipped float image), are left as they are.
"""

from __future__ import annotations

import torch

# how close to +-1 a pixel must be to count as clipped: well inside one 8-bit step (2/255)
CLIPPED_TOLERANCE = 1e-3
# an image with at least this share of its values at +-1 counts as clipped (option mean_gain_clipped)
CLIPPED_SHARE = 1e-3


def at_range_ends(images: torch.Tensor) -> torch.Tensor:
    """Where ``images`` is at ``+1`` or ``-1`` (within ``CLIPPED_TOLERANCE``): a bool tensor of its shape."""
    return (images.abs() - 1).abs() <= CLIPPED_TOLERANCE


def clipped_share(images: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the share of each sample's values at ``+-1``, for ``images`` of shape ``(B, n)``."""
    return at_range_ends(images).float().mean(1)


def clipped_decoding(decoded: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``decoded`` clipped where ``images`` is at ``+1`` (``-1``): values above (below) it become the
    image's (``min(D, x)`` at the top of the range, ``max(D, x)`` at the bottom, ``D`` elsewhere). The
    result keeps ``decoded``'s memory layout, so the encoder convolves the same bits it would for the
    unclipped decoding; ``decoded`` itself is left as it is (a user's decoder may hand back its own buffer).
    A ``decoded`` that requires grad (``method="grad"``) is clipped differentiably: the pixels a
    decoding overshoots pass no gradient, the one-sided pixel loss; autograd keeps a one-byte mask
    for it, not the decoding and the bounds."""
    upper = torch.where((images - 1).abs() <= CLIPPED_TOLERANCE, images, torch.inf)
    lower = torch.where((images + 1).abs() <= CLIPPED_TOLERANCE, images, -torch.inf)
    if decoded.requires_grad:  # no encoder follows, so no layout to keep
        with torch.no_grad():
            overshoot = (decoded > upper) | (decoded < lower)
        return torch.where(overshoot, images, decoded)
    return torch.clamp(decoded, lower, upper, out=torch.empty_like(decoded))
