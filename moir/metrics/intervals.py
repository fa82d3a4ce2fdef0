"""How much a reported percentage can mean: the sample size it implies and its binomial confidence interval.

A percentage printed with d decimals that is a share of answers judged correct, k/n, constrains n: only some n
have a k with 100*k/n rounding to it. `implied_sample_sizes` lists them (n up to `max_n`); the smallest is the
fewest questions the number can come from. `binomial_interval` gives the 95% (or other) interval of a share k/n:
Wilson's score interval or the exact Clopper-Pearson one, so a reader sees how far apart two such numbers must be
to differ.
"""

from __future__ import annotations

import math
from statistics import NormalDist

METHODS = ("wilson", "exact")


def implied_sample_sizes(percent: float, *, decimals: int = 2, max_n: int = 100) -> list[tuple[int, int]]:
    """Every (n, k) with 1 <= n <= max_n, 0 <= k <= n and 100*k/n within half a unit of the last printed decimal
    of `percent` (i.e. rounding to it), the smallest k for each n; in increasing n."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must lie in [0, 100], got {percent!r}")
    half_unit = 0.5 * 10.0 ** -decimals
    found = []
    for n in range(1, max_n + 1):
        k = round(percent * n / 100.0)  # the only candidate: 100*k/n moves by 100/n > 2*half_unit per step of k
        for candidate in (k - 1, k, k + 1):
            if 0 <= candidate <= n and abs(100.0 * candidate / n - percent) <= half_unit + 1e-9:
                found.append((n, candidate))
                break
    return found


def implied_sample_size(percent: float, *, decimals: int = 2, max_n: int = 100) -> tuple[int, int] | None:
    """The smallest n (with its k) for which some k/n rounds to `percent`; None when no n <= max_n does."""
    sizes = implied_sample_sizes(percent, decimals=decimals, max_n=max_n)
    return sizes[0] if sizes else None


def _binomial_tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1.0 - p) ** (n - i) for i in range(k, n + 1))


def _bisect(function, target: float, increasing: bool) -> float:
    """The p in [0, 1] where a monotone function of p crosses target (60 halvings: below 1e-15)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if (function(middle) < target) == increasing:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def binomial_interval(k: int, n: int, *, level: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """The two-sided `level` confidence interval of a share k/n, as fractions in [0, 1].

    "wilson": Wilson's score interval. "exact": Clopper-Pearson, the p where P(X >= k) = alpha/2 (lower) and
    P(X <= k) = alpha/2 (upper), 0 and 1 at the ends.
    """
    if not (isinstance(n, int) and isinstance(k, int) and n >= 1 and 0 <= k <= n):
        raise ValueError(f"need integers 0 <= k <= n, n >= 1; got k={k!r}, n={n!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    alpha = 1.0 - level
    if method == "wilson":
        z = NormalDist().inv_cdf(1.0 - alpha / 2)
        share = k / n
        centre = (share + z * z / (2 * n)) / (1 + z * z / n)
        half_width = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
        return max(0.0, centre - half_width), min(1.0, centre + half_width)
    if method == "exact":
        low = 0.0 if k == 0 else _bisect(lambda p: _binomial_tail_at_least(k, n, p), alpha / 2, increasing=True)
        high = 1.0 if k == n else _bisect(lambda p: 1.0 - _binomial_tail_at_least(k + 1, n, p), alpha / 2,
                                          increasing=False)
        return low, high
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def paper_percentage_interval(
    percent: float, *, decimals: int = 2, max_n: int = 100, level: float = 0.95, method: str = "wilson"
) -> dict[str, float | int] | None:
    """For a reported percentage: the smallest implied sample size n, its k, and the interval of k/n in percent,
    {"n", "k", "low", "high"}; None when no n <= max_n gives the percentage."""
    size = implied_sample_size(percent, decimals=decimals, max_n=max_n)
    if size is None:
        return None
    n, k = size
    low, high = binomial_interval(k, n, level=level, method=method)
    return {"n": n, "k": k, "low": 100.0 * low, "high": 100.0 * high}
