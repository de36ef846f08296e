"""Exact binomial statistics for the audit and the DPO's report.

``binom_cdf``/``binom_sf`` through the regularised incomplete beta function (a continued
fraction: fast for millions of calls), a two-sided exact binomial test, exact Clopper-Pearson
intervals found by bisection, and Holm's step-down correction. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["binom_cdf", "binom_sf", "binom_test", "clopper_pearson", "holm"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1_000_000):
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
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exactly (to double precision)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return _betainc(n - k, k + 1, 1.0 - p)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X > k), computed directly (no cancellation in the far tail)."""
    if k < 0:
        return 1.0
    if k >= n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return _betainc(k + 1, n - k, p)


def _log_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )


def binom_test(k: int, n: int, p: float) -> float:
    """Two-sided exact binomial test: the probability of outcomes no more likely than ``k``."""
    if n == 0:
        return 1.0
    if p <= 0.0:
        return 1.0 if k == 0 else 0.0
    if p >= 1.0:
        return 1.0 if k == n else 0.0
    lk = _log_pmf(k, n, p) + 1e-7  # relative tolerance, as in the usual implementations
    mode = min(n, math.floor((n + 1) * p))
    if k == mode:
        return 1.0
    if k < mode:
        # smallest j in (mode, n] with pmf(j) <= pmf(k); pmf decreases there
        lo, hi = mode, n + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _log_pmf(mid, n, p) <= lk:
                hi = mid
            else:
                lo = mid
        total = binom_cdf(k, n, p) + (binom_sf(hi - 1, n, p) if hi <= n else 0.0)
    else:
        # largest j in [0, mode) with pmf(j) <= pmf(k); pmf increases there
        lo, hi = -1, mode
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _log_pmf(mid, n, p) <= lk:
                lo = mid
            else:
                hi = mid
        total = (binom_cdf(lo, n, p) if lo >= 0 else 0.0) + binom_sf(k - 1, n, p)
    return min(1.0, total)


def _bisect(f: Callable[[float], float], target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else _bisect(lambda p: binom_sf(k - 1, n, p), alpha / 2, True)
    high = 1.0 if k == n else _bisect(lambda p: binom_cdf(k, n, p), alpha / 2, False)
    return low, high


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
