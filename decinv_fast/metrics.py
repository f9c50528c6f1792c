"""``nmse_db``: the latent error the benchmarks, the demo and the paper report, in dB."""

from __future__ import annotations

import torch

from .options import check_finite, check_flag


def nmse_db(estimate: torch.Tensor, truth: torch.Tensor, *, per_sample: bool = False):
    """``10 log10(||estimate - truth||² / ||truth||²)``: one float, or a ``(B,)`` tensor per sample.
    Computed in fp64 with each norm scaled by its largest value, so finite values of any magnitude score
    (fp32 squares overflow from about 1.8e19). A ``truth`` of zero norm (with ``per_sample``: any sample's) is
    a ``ValueError``, not NaN; so are non-finite values, an empty ``truth`` and ``per_sample`` for tensors
    without a batch dim."""
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
    if truth.numel() == 0:
        raise ValueError(f"truth: empty tensor (shape {tuple(truth.shape)}); NMSE needs at least one value")
    if per_sample and truth.dim() < 2:
        raise ValueError(f"per_sample=True needs (B, ...) tensors of at least 2 dims, one row per sample; got shape "
                         f"{tuple(truth.shape)}")
    rows = truth.shape[0] if per_sample else 1
    # in fp64, halved (exact) and each norm scaled by its largest value: no square overflows or underflows,
    # whatever the inputs' magnitude (fp32 squares overflow from about 1.8e19)
    t = truth.detach().reshape(rows, -1).double() * 0.5
    d = estimate.detach().reshape(rows, -1).double() * 0.5 - t
    log_t = _log10_norm(t)
    if not bool(torch.isfinite(log_t).all()):  # 0/0 or x/0: an error, not NaN or inf
        raise ValueError(f"truth is all zeros{' for some sample' if per_sample else ''}; "
                         "NMSE is normalised by ||truth||² and undefined there")
    db = 20 * (_log10_norm(d) - log_t)  # -inf where estimate equals truth
    return db.to(torch.float32) if per_sample else float(db[0])


def _log10_norm(rows: torch.Tensor) -> torch.Tensor:
    """``log10`` of each row's Euclidean norm (fp64; ``-inf`` for a zero row), computed as ``log10(m) +
    log10(||row / m||)`` with ``m`` the row's largest magnitude."""
    m = rows.abs().amax(1)
    scaled = rows / torch.where(m > 0, m, torch.ones_like(m))[:, None]
    return torch.log10(m) + 0.5 * torch.log10(scaled.square().sum(1))
