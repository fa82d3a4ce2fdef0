"""Statistics for comparing two arms, as pure functions (numpy only): a paired bootstrap over questions and seeds,
the exact McNemar test, Holm's correction over a family of comparisons, and Spearman's rank correlation with a
bootstrap interval.

Conventions. Per-question outcomes of two arms are arrays of shape (seeds, questions): row s holds seed s, column q
question q, the same question in the same column in both arms (0/1 correctness, or a score). Every resampling
function takes a `seed` and gives the same answer for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

# Resamples drawn at a time: a (chunk, questions) count matrix stays a few tens of MB at 2,000+ questions.
_CHUNK = 500


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 1 and b.ndim == 1:  # one seed
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"the two arms must have the same (seeds, questions) shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no paired outcomes to compare")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("outcomes must be finite numbers")
    return a, b


def paired_bootstrap(a, b, *, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean difference a - b (in the outcomes' unit) and its percentile bootstrap interval.

    Two levels, as the outcomes were produced: each resample draws the questions with replacement (the same draw
    for every seed, so pairs stay paired across seeds), then the seeds with replacement; the statistic is the mean
    of a - b over the drawn seeds and questions. With one seed the second level changes nothing.
    Returns {"mean_diff", "low", "high", "n_seeds", "n_questions", "n_resamples", "level"}."""
    a, b = _paired(a, b)
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"n_resamples must be >= 1 and level in (0, 1), got {n_resamples} and {level}")
    diff = a - b
    n_seeds, n_questions = diff.shape
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        question_counts = rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=size)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=size)
        # sum_s sum_q c_s c_q d[s, q] / (S Q): the mean over the drawn seeds and questions
        stats.append(((seed_counts @ diff) * question_counts).sum(1) / (n_seeds * n_questions))
    stats = np.concatenate(stats)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return {"mean_diff": float(diff.mean()), "low": float(low), "high": float(high), "n_seeds": n_seeds,
            "n_questions": n_questions, "n_resamples": n_resamples, "level": level}


def mcnemar_exact(a, b) -> dict:
    """The exact (binomial) two-sided McNemar test of paired 0/1 outcomes.

    a, b: boolean arrays of any shape, paired element by element; with several seeds, (seeds, questions) arrays
    are pooled by stacking their pairs (each seed's answer to a question is one pair), which treats the seeds'
    pairs as independent. Under the null hypothesis each discordant pair is equally likely to favour either arm:
    p = min(1, 2 P[Binomial(n, 1/2) <= min(n_ab, n_ba)]), n = n_ab + n_ba; p = 1 without discordant pairs.
    Returns {"n_pairs", "a_only" (a right, b wrong), "b_only", "p"}."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"the two arms must have the same shape, got {a.shape} and {b.shape}")
    for name, values in (("a", a), ("b", b)):
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"mcnemar_exact: {name} must hold 0/1 (correct or not) outcomes")
    a, b = a.astype(bool).ravel(), b.astype(bool).ravel()
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    tail = sum(comb(n, i) for i in range(min(a_only, b_only) + 1))
    p = 1.0 if n == 0 else min(1.0, 2 * tail / 2**n)  # exact integers; the division rounds once
    return {"n_pairs": int(a.size), "a_only": a_only, "b_only": b_only, "p": p}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the family-wise error rate over the comparisons
    is controlled at alpha by rejecting every hypothesis whose adjusted p is <= alpha.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"holm: p-values must be numbers in [0, 1], got {list(p_values)}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    values = np.asarray(values, dtype=float)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN when either variable is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman: x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def spearman_bootstrap(x, y, *, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman's rho of (x, y) and its percentile bootstrap interval over resampled pairs.

    A resample in which either variable is constant has no correlation; those are left out and counted
    (`n_degenerate`). Returns {"rho", "low", "high", "n", "n_resamples", "n_degenerate", "level"}; low/high are
    NaN when fewer than 3 pairs are given or every resample is degenerate."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman_bootstrap: x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("spearman_bootstrap: x and y must be finite numbers")
    n = len(x)
    rho = spearman(x, y) if n >= 2 else float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array([spearman(x[i], y[i]) for i in rng.integers(0, n, size=(n_resamples, n))]) if n >= 3 \
        else np.full(n_resamples, np.nan)
    valid = stats[np.isfinite(stats)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(valid, [tail, 100 - tail]) if len(valid) else (float("nan"), float("nan"))
    return {"rho": rho, "low": float(low), "high": float(high), "n": n, "n_resamples": n_resamples,
            "n_degenerate": int(n_resamples - len(valid)), "level": level}
