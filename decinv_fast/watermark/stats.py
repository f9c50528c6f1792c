"""Detection statistic and p-value for a tree-ring key.

Null hypothesis: the image was generated from noise that does not carry the key, so the recovered
noise ``y`` (one channel, ``(h, w)``) is white Gaussian, ``y ~ N(0, sigma^2 I)``, independent of the key.

Derivation. With the orthonormal DFT ``Y = F y`` (see :mod:`.key`): for a frequency ``k`` with
``k != -k`` (mod the grid), ``Re Y[k]`` and ``Im Y[k]`` are independent ``N(0, sigma^2 / 2)``, and
``Y[-k] = conj Y[k]``; ``Y[0]`` is real ``N(0, sigma^2)``. The keyed disc ``M`` is symmetric and holds
the zero frequency and ``(|M| - 1) / 2`` pairs ``{k, -k}``; the key ``K`` is real. Over one member of
every pair, ``(Re Y - K)^2 / (sigma^2/2) + (Im Y)^2 / (sigma^2/2)`` is a sum of two squared unit
normals with means ``K / (sigma / sqrt 2)`` and 0, and counting both members of the pair gives the
same sum as ``|Y[k] - K[k]|^2 / sigma^2 + |Y[-k] - K[-k]|^2 / sigma^2``. Hence

    S = sum_{k in M} |Y[k] - K[k]|^2 / sigma^2  ~  noncentral chi^2(df = |M|, nc = sum_{k in M} K[k]^2 / sigma^2)

exactly under the null. Watermarked noise, perfectly recovered, has ``Y = K`` on ``M`` and ``S = 0``;
so a *small* ``S`` is evidence of the key and the one-sided p-value is the lower tail
``p = P(S_null <= S) = F_ncx2(S; |M|, nc)``. ``sigma^2`` is estimated as the mean ``|Y[k]|^2`` over the
bins *outside* the mask (unaffected by the key), or given. The p-value is exact only if the
recovered noise of an unwatermarked image is white Gaussian; inversion errors can break that, which
is why the benchmark also measures empirical false-positive rates.

The score used for ROC curves is the standardised statistic ``(E0[S] - S) / sd0[S]`` with the null
mean ``|M| + nc`` and variance ``2 (|M| + 2 nc)`` (higher = more likely watermarked); it does not
underflow like a p-value does.
"""

from __future__ import annotations

import math

import torch

from ..options import is_real
from .key import TreeRingKey, fourier


def _log_gamma_p(a: float, y: float) -> float:
    """``log P(a, y)``, the regularised lower incomplete gamma function, accurate when tiny."""
    if y <= 0:
        return -math.inf
    if y < a + 1:
        # P(a, y) = y^a e^{-y} / Gamma(a + 1) * sum_n y^n / ((a + 1) ... (a + n)); terms shrink geometrically.
        term, total, n = 1.0, 1.0, 0
        while term > 1e-17 * total and n < 10000:
            n += 1
            term *= y / (a + n)
            total += term
        return a * math.log(y) - y - math.lgamma(a + 1) + math.log(total)
    q = float(torch.special.gammaincc(torch.tensor(a, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)))
    return math.log1p(-q)


def log_ncx2_cdf(x: float, df: float, nc: float) -> float:
    """Natural log of the noncentral chi-square CDF ``P(chi'^2_df(nc) <= x)``.

    Poisson mixture of central chi-squares: ``F = sum_j Pois(j; nc/2) * P(df/2 + j, x/2)``, summed in
    log space over the Poisson mass (``nc/2 +- 12 sd``), so p-values far below 1e-300 stay finite.
    """
    if df <= 0 or nc < 0 or not math.isfinite(x):
        raise ValueError(f"need df > 0, nc >= 0 and a finite x, got x={x}, df={df}, nc={nc}")
    if x <= 0:
        return -math.inf
    lam = nc / 2
    if lam == 0:
        return _log_gamma_p(df / 2, x / 2)
    spread = 12 * math.sqrt(lam) + 30
    lo, hi = max(0, int(lam - spread)), int(lam + spread) + 1
    logs = [-lam + j * math.log(lam) - math.lgamma(j + 1) + _log_gamma_p(df / 2 + j, x / 2) for j in range(lo, hi)]
    top = max(logs)
    if top == -math.inf:
        return top
    return min(0.0, top + math.log(sum(math.exp(v - top) for v in logs)))


def noise_statistic(noise: torch.Tensor, key: TreeRingKey, *, noise_std: float | None = None) -> dict:
    """Per-sample detection statistics of recovered noise ``(B, C, h, w)`` against ``key``.

    Returns a dict of ``(B,)`` float64 CPU tensors: ``distance`` (``S``), ``df``/``nc`` (null
    parameters), ``score`` (standardised, higher = watermarked), ``log10_p`` and ``p_value``
    (lower tail, see the module docstring), ``sigma`` (the noise scale used) and ``l1`` (the paper's
    mean ``|Y - K|`` over the mask, in this module's orthonormal units).
    """
    key.check(noise, "noise")
    if noise_std is not None and not (is_real(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std must be a positive number or None (estimate it), got {noise_std!r}")
    spectrum = fourier(noise, key.channel).cpu()
    mask, values = key.mask, key.values
    if noise_std is None:
        var = spectrum[:, ~mask].abs().square().mean(dim=1)
    else:
        var = torch.full((noise.shape[0],), float(noise_std) ** 2, dtype=torch.float64)
    residual = (spectrum[:, mask] - values[mask]).abs()
    distance = residual.square().sum(dim=1) / var
    df = float(key.size)
    nc = values[mask].square().sum() / var
    mean, sd = df + nc, torch.sqrt(2 * (df + 2 * nc))
    log_p = torch.tensor([log_ncx2_cdf(float(s), df, float(n)) for s, n in zip(distance, nc, strict=True)],
                         dtype=torch.float64)
    return dict(distance=distance, df=torch.full_like(distance, df), nc=nc, score=(mean - distance) / sd,
                log10_p=log_p / math.log(10), p_value=log_p.exp(), sigma=var.sqrt(), l1=residual.mean(dim=1))
