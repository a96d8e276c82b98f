"""Pooling a panel's votes and measuring agreement (PoLL, Verga et al. 2024: "Replacing Judges with Juries").

Pooling: max voting for binary verdicts (1 correct, 0 incorrect; the QA setting), average pooling for 1-5 ratings
(the arena setting). Agreement: Fleiss' kappa among the judges, Cohen's kappa of one rater against human labels,
unweighted for binary verdicts and quadratic-weighted for 1-5 ratings (ordinal: 4 against 5 is a smaller
disagreement than 1 against 5). A kappa is ``None`` when it is undefined (too few items, or no expected
disagreement: every rating in one category). :func:`kappa_with_interval` adds a percentile bootstrap interval over
items (unweighted kappa), for the pairwise jury and the preference table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
"""Fixed, so the same votes give the same interval."""

Vote = int | None
"""A judge's verdict on one answer (``None``: the judge failed or answered unparseably)."""


def max_vote(votes: Sequence[Vote]) -> int | None:
    """The majority of the valid binary votes; a tie is 0 (the answer did not win a majority); ``None`` when no
    vote is valid."""
    valid = [v for v in votes if v is not None]
    return (1 if 2 * sum(valid) > len(valid) else 0) if valid else None


def average(votes: Sequence[Vote]) -> float | None:
    """The mean of the valid ratings; ``None`` when no rating is valid."""
    valid = [v for v in votes if v is not None]
    return sum(valid) / len(valid) if valid else None


def fleiss_kappa(ratings: Sequence[Sequence[int]], categories: Sequence[int]) -> float | None:
    """Fleiss' kappa of items each rated by the same number (>= 2) of raters: ``ratings[item][rater]``."""
    if not ratings or len({len(row) for row in ratings}) != 1 or len(ratings[0]) < 2:
        return None
    items, raters = len(ratings), len(ratings[0])
    counts = [[row.count(c) for c in categories] for row in ratings]
    observed = sum((sum(n * n for n in row) - raters) / (raters * (raters - 1)) for row in counts) / items
    shares = [sum(row[j] for row in counts) / (items * raters) for j in range(len(categories))]
    expected = sum(p * p for p in shares)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def cohen_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int], quadratic: bool = False) -> float | None:
    """Cohen's kappa of two raters over the same items (``quadratic``: weights (i-j)^2/(k-1)^2 for ordinal
    ratings, else 0/1 disagreement): 1 - observed disagreement / disagreement expected from the marginals."""
    if not a or len(a) != len(b):
        return None
    k, index = len(categories), {c: i for i, c in enumerate(categories)}

    def weight(i: int, j: int) -> float:
        return (i - j) ** 2 / (k - 1) ** 2 if quadratic else float(i != j)

    n = len(a)
    observed = sum(weight(index[x], index[y]) for x, y in zip(a, b, strict=True)) / n
    share_a = [sum(index[x] == i for x in a) / n for i in range(k)]
    share_b = [sum(index[y] == j for y in b) / n for j in range(k)]
    expected = sum(share_a[i] * share_b[j] * weight(i, j) for i in range(k) for j in range(k))
    return None if expected == 0 else 1.0 - observed / expected


@dataclass(frozen=True)
class Kappa:
    """Unweighted Cohen's kappa over ``n`` items with its 95% bootstrap interval (``None`` where undefined)."""

    value: float | None
    ci: tuple[float, float] | None
    n: int


def kappa_with_interval(a: Sequence[int], b: Sequence[int], categories: Sequence[int]) -> Kappa:
    """Cohen's kappa of ``a`` against ``b`` and the 2.5-97.5 percentiles of its value over items resampled with
    replacement (:data:`BOOTSTRAP_SEED`; resamples where kappa is undefined are left out)."""
    value, n = cohen_kappa(a, b, categories), len(a)
    if value is None:
        return Kappa(None, None, n)
    k, index = len(categories), {c: i for i, c in enumerate(categories)}
    codes = np.array([index[x] * k + index[y] for x, y in zip(a, b, strict=True)])
    picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    offsets = np.arange(BOOTSTRAP_RESAMPLES)[:, None] * k * k
    counts = np.bincount((codes[picks] + offsets).ravel(), minlength=BOOTSTRAP_RESAMPLES * k * k)
    tables = counts.reshape(BOOTSTRAP_RESAMPLES, k, k) / n  # each resample's shares of (a, b) pairs
    observed = np.trace(tables, axis1=1, axis2=2)
    expected = (tables.sum(axis=2) * tables.sum(axis=1)).sum(axis=1)
    defined = expected < 1.0 - 1e-12
    if not defined.any():
        return Kappa(value, None, n)
    kappas = (observed[defined] - expected[defined]) / (1.0 - expected[defined])
    low, high = np.percentile(kappas, [2.5, 97.5])
    return Kappa(value, (float(low), float(high)), n)
