"""ROC summaries of detection scores: AUC and TPR at a fixed false-positive rate."""

from __future__ import annotations

import math

import torch

from ..options import is_real, tensor_hint


def _scores(name: str, scores) -> torch.Tensor:
    values = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be a non-empty set of finite scores")
    return values


def roc_auc(positive, negative) -> float:
    """``P(score_pos > score_neg) + P(tie) / 2`` over all pairs (the Mann-Whitney AUC); higher = better."""
    pos, neg = _scores("positive", positive), _scores("negative", negative)
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + ties / 2)


def tpr_at_fpr(positive, negative, fpr: float = 0.01) -> tuple[float, float]:
    """``(TPR, empirical FPR)`` at the strictest threshold whose empirical FPR is at most ``fpr``.

    A sample is flagged when its score is strictly above the threshold ``negative`` score ranked
    ``floor(fpr * n_neg) + 1``-th from the top. With fewer than ``1 / fpr`` negatives this is the
    TPR at *zero* false positives (the threshold is the highest clean score): the empirical FPR
    cannot resolve 1% with 32 negatives, so the returned FPR says what was actually achieved.
    """
    if not (is_real(fpr) and 0 <= fpr < 1):
        raise ValueError(f"fpr must lie in [0, 1), got {fpr!r}{tensor_hint(fpr)}")
    pos, neg = _scores("positive", positive), _scores("negative", negative)
    n = neg.numel()
    allowed = min(math.floor(fpr * n * (1 + 1e-12)), n - 1)  # 0.29 * 100 = 28.999999999999996 allows 29
    threshold = torch.sort(neg, descending=True).values[allowed]
    return float((pos > threshold).double().mean()), float((neg > threshold).double().mean())
