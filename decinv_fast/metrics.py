"""``nmse_db``: the latent error the benchmarks, the demo and the paper report, in dB."""

from __future__ import annotations

import torch

from . import reference
from .options import check_finite, check_flag


def nmse_db(estimate: torch.Tensor, truth: torch.Tensor, *, per_sample: bool = False):
    """``10 log10(||estimate - truth||² / ||truth||²)``: one float, or a ``(B,)`` tensor per sample.
    A ``truth`` of zero norm (with ``per_sample``: any sample's) is a ``ValueError``, not NaN; so are
    non-finite values."""
    for name, t in (("estimate", estimate), ("truth", truth)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a real float tensor, got {type(t).__name__}"
                            + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    check_flag("per_sample", per_sample)
    if estimate.device != truth.device:
        raise ValueError(f"estimate is on {estimate.device} but truth on {truth.device}")
    check_finite("estimate", estimate)
    check_finite("truth", truth)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and truth {tuple(truth.shape)} differ in shape")
    samples = truth.reshape(truth.shape[0] if per_sample else 1, -1)
    if not bool(samples.float().square().sum(1).gt(0).all()):  # 0/0 or x/0: an error, not NaN or inf
        raise ValueError(f"truth is all zeros{' for some sample' if per_sample else ''}; "
                         "NMSE is normalised by ||truth||² and undefined there")
    if per_sample:
        return 10 * torch.log10(reference.nmse(estimate, truth))
    ratio = reference.nmse(estimate.reshape(1, -1), truth.reshape(1, -1))[0]
    return float(10 * torch.log10(ratio))
