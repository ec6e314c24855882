"""Seed statistics for benchmark tables: mean ± sd per arm, and the paired difference of two arms run on the same
seeds with a 95% t-interval (the rule of ``benchmarks/README.md``, "Protocol").

No scipy: the Student t quantile is found by bisection on the t distribution's CDF, written with the regularised
incomplete beta function (continued fraction, as in Numerical Recipes 6.4). Accurate to about 1e-10, far below
what a table prints.

    >>> mean, sd, lo, hi, n = paired_difference([63.6, 60.3, 62.0], [60.6, 61.0, 60.1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_sd", "paired_difference", "t_quantile"]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator). One value: sd is NaN (undefined), so a
    single seed is never printed as if its spread were zero."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_sd: no values")
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> tuple[float, float, float, float, int]:
    """Paired difference a - b over seeds run by both arms, with its t-interval.

    ``a[i]`` and ``b[i]`` must come from the same seed. Returns ``(mean, sd, lo, hi, n)``: the mean and sample sd
    of the n differences, and ``mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n)``. With one pair the sd and the
    interval are NaN (no interval can be drawn from one seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}; pair the runs by seed")
    if not a:
        raise ValueError("paired_difference: no pairs")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_difference: confidence must lie in (0, 1), got {confidence}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n == 1:
        return mean, math.nan, math.nan, math.nan, 1
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half, n


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with df degrees of freedom (df > 0)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"t_quantile: df must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)
