"""The drift statistics, as plain functions of counts: numpy and the standard library only.

Every function compares a reference (what a version's model gave on texts it had not seen, stored
as counts) with a window of live predictions counted over the same categories or bins, so a stored
profile is all the reference a comparison needs. scipy has the same tests (the tests check these
against it to 1e-9), but importing ``scipy.stats`` costs a worker about 70 MB and 1.8 s: more than
the worker itself. The two distribution functions the p-values need are a few lines each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: the proportion an empty PSI bucket counts as: ln(0) is infinite, and a floor is the usual way out
PSI_FLOOR = 1e-4


def _counts(values: Sequence[float]) -> np.ndarray:
    counts = np.asarray(values, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or not counts.sum() > 0:
        raise ValueError("expected a non-empty, non-negative 1-d array of counts with a positive sum")
    return counts


def _pair(reference: Sequence[float], window: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r, w = _counts(reference), _counts(window)
    if r.shape != w.shape:
        raise ValueError("the reference and the window must be counted over the same bins")
    return r, w


def js_distance(reference: Sequence[float], window: Sequence[float]) -> float:
    """Jensen-Shannon distance, base 2, of two distributions given as counts: the square root of
    their JS divergence, 0 when equal, 1 when disjoint (``scipy.spatial.distance.jensenshannon(p, q,
    base=2)``)."""
    p, q = _pair(reference, window)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = (np.where(p > 0, p * np.log2(p / m), 0.0).sum()
                      + np.where(q > 0, q * np.log2(q / m), 0.0).sum()) / 2
    return float(math.sqrt(max(divergence, 0.0)))


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-squared variable with ``dof`` (a whole number) degrees of freedom: the
    regularised upper incomplete gamma Q(dof/2, x/2), summed in closed form (``scipy.stats.chi2.sf``)."""
    if dof < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if x <= 0:
        return 1.0
    h = x / 2
    if dof % 2 == 0:  # Q(k, h) = exp(-h) * sum of h^i / i! for i < k
        total = sum(math.exp(-h + i * math.log(h) - math.lgamma(i + 1)) for i in range(dof // 2))
    else:  # Q(k + 1/2, h) = erfc(sqrt(h)) + exp(-h) * sum of h^(i - 1/2) / Gamma(i + 1/2), 1 <= i <= k
        total = math.erfc(math.sqrt(h)) + sum(math.exp(-h + (i - 0.5) * math.log(h) - math.lgamma(i + 0.5))
                                              for i in range(1, (dof - 1) // 2 + 1))
    return min(total, 1.0)


def chi_squared(reference: Sequence[float], window: Sequence[float]) -> tuple[float, float, int]:
    """Pearson's chi-squared test of homogeneity of the 2 x k table of counts (reference, window):
    ``(statistic, p-value, degrees of freedom)``, with no continuity correction
    (``scipy.stats.chi2_contingency([reference, window], correction=False)``). A category neither has
    is left out; with a single category left there is nothing to test (p-value 1).

    Homogeneity rather than goodness of fit: the reference is itself a sample, and taking its
    proportions as exact would have the test mistake the reference's own noise for drift.
    """
    table = np.vstack(_pair(reference, window))
    table = table[:, table.sum(axis=0) > 0]
    dof = table.shape[1] - 1
    if dof < 1:
        return 0.0, 1.0, 0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return statistic, chi2_sf(statistic, dof), dof


def kolmogorov_sf(z: float) -> float:
    """P(K >= z) for Kolmogorov's limiting distribution (``scipy.stats.kstwobign.sf``): the
    two-sided p-value of a KS statistic ``d`` of samples of sizes n and m at ``z = d * sqrt(nm/(n+m))``.
    Each of the two series converges in a few terms on its side of 1."""
    if z <= 0:
        return 1.0
    if z < 1:  # 1 - sqrt(2 pi)/z * sum of exp(-(2k-1)^2 pi^2 / (8 z^2))
        cdf = math.sqrt(2 * math.pi) / z * sum(math.exp(-((2 * k - 1) ** 2) * math.pi ** 2 / (8 * z * z))
                                               for k in range(1, 8))
        return min(max(1.0 - cdf, 0.0), 1.0)
    return min(max(2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * z * z) for k in range(1, 101)), 0.0), 1.0)


def ks_from_histograms(reference: Sequence[float], window: Sequence[float],
                       alternative: str = "two-sided") -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic of two samples binned on the same edges, and its
    asymptotic p-value: ``(statistic, p-value)``.

    The statistic is the largest gap between the two empirical CDFs read at the bins' upper edges
    (the cumulative counts): exactly ``scipy.stats.ks_2samp(window, reference, alternative)`` of the
    samples the histograms stand for, each value moved to its bin. ``"greater"`` measures only how far
    the window's CDF rises above the reference's, that is how much more of the window lies in the
    low bins. The p-value is Kolmogorov's limit (two-sided) or Smirnov's with Hodges' correction
    (one-sided), as ``ks_2samp(..., method="asymp")`` gives the latter.
    """
    r, w = _pair(reference, window)
    n, m = w.sum(), r.sum()
    gap = np.cumsum(w) / n - np.cumsum(r) / m
    gap[-1] = 0.0  # both CDFs reach 1 at the last edge; rounding must not make a gap of it
    if alternative == "two-sided":
        d = float(np.abs(gap).max())
    elif alternative == "greater":
        d = float(max(gap.max(), 0.0))
    elif alternative == "less":
        d = float(max((-gap).max(), 0.0))
    else:
        raise ValueError(f"alternative must be two-sided, greater or less, not {alternative!r}")
    big, small = max(n, m), min(n, m)
    z = math.sqrt(big * small / (big + small)) * d
    if alternative == "two-sided":
        return d, kolmogorov_sf(z)
    p = math.exp(-2 * z * z - 2 * z * (big + 2 * small) / math.sqrt(big * small * (big + small)) / 3.0)
    return d, min(max(p, 0.0), 1.0)


def psi(reference: Sequence[float], window: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index over the same buckets: the sum over buckets of (window share -
    reference share) * ln(window share / reference share), an empty bucket's share taken as ``floor``.
    The usual reading: under 0.1 stable, 0.1 to 0.25 a moderate shift, over 0.25 a major one."""
    r, w = _pair(reference, window)
    p = np.maximum(r / r.sum(), floor)
    q = np.maximum(w / w.sum(), floor)
    return float(((q - p) * np.log(q / p)).sum())
