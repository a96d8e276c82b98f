"""Accuracies with their uncertainty: 95% Wilson score intervals and the number of prompts behind them.

A needle accuracy of 0.90 from 20 prompts ([0.70, 0.97]) and from 100 prompts ([0.83, 0.94]) are not the same
claim, so every accuracy the report shows carries ``n`` and its interval, and so do the difference and the ratio of
two (final against before extension), and the ratio of two perplexities on the same documents.
Counts come from the results JSON: ``n_by_length``/``correct_by_length`` of a needle grid
(``toolkit.evals.niah.grid_summary``), else its cells.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.formatting.numbers import is_number, with_interval

BINARY_METRICS = ("acc", "acc_norm", "exact_match", "em", "accuracy")
"""lm-eval metrics that are a fraction of right answers (one 0/1 outcome per document)."""


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (z=1.96: 95%); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """An accuracy: ``correct`` of ``n`` when counted, else only its ``value`` (``n`` unknown)."""

    value: float
    correct: int | None = None
    n: int | None = None

    @classmethod
    def of(cls, correct: int, n: int) -> Rate:
        return cls(correct / n if n else 0.0, correct, n)

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.correct, self.n) if self.correct is not None and self.n else None

    def format(self, digits: int = 2, with_n: bool = True) -> str:
        """``0.97 [0.92, 0.99] n=100``; ``0.97 (n unknown)`` without counts."""
        text = with_interval(self.value, self.interval, digits)
        if not with_n:
            return text
        return text + (" (n unknown)" if self.interval is None else f" n={self.n}")

    def __str__(self) -> str:
        return self.format()


def ratio_interval(new: Rate, old: Rate) -> tuple[float, float] | None:
    """95% interval of ``new.value / old.value`` from the two Wilson intervals by MOVER-R (Donner and Zou, 2012),
    the rates taken as independent samples (wider than needed where both models tend to get the same prompts
    right). ``None`` without counts or when ``old`` is 0."""
    if new.interval is None or old.interval is None or not old.value:
        return None
    (l1, u1), (l2, u2) = new.interval, old.interval
    p1, p2 = new.value, old.value
    product = p1 * p2
    # each end is a root of a quadratic; the lower one in its conjugate form, whose denominator cannot reach 0
    shrink = l1 * (2 * p1 - l1)
    low = shrink / (product + math.sqrt(max(0.0, product**2 - shrink * u2 * (2 * p2 - u2)))) if p1 else 0.0
    high = (product + math.sqrt(max(0.0, product**2 - u1 * (2 * p1 - u1) * l2 * (2 * p2 - l2)))) / (l2 * (2 * p2 - l2))
    return low, high


def difference_interval(new: Rate, old: Rate) -> tuple[float, float] | None:
    """95% interval of ``new.value - old.value`` from the two Wilson intervals by Newcombe's hybrid score method
    (1998; MOVER-D), the rates taken as independent samples, as :func:`ratio_interval`. ``None`` without counts."""
    if new.interval is None or old.interval is None:
        return None
    (l1, u1), (l2, u2) = new.interval, old.interval
    p1, p2 = new.value, old.value
    return p1 - p2 - math.hypot(p1 - l1, u2 - p2), p1 - p2 + math.hypot(u1 - p1, p2 - l2)


COMPARISON_INTERVAL = ("The interval of a difference or ratio of two scores is 95% by MOVER from their Wilson "
                       "intervals (Newcombe, 1998; Donner and Zou, 2012), the two evaluations taken as independent "
                       "samples: wider than needed where both models tend to get the same prompts right.")
"""How an interval of two scores compared is made, in the words of the tables that show one."""
LOSS_RATIO_INTERVAL = ("The interval of a ratio of perplexities is 95%: the paired t interval of the documents' "
                       "differences of mean loss (both models read the same documents), exponentiated.")
"""How the interval of two perplexities compared is made, in the words of the tables that show one."""


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """95% Student-t interval of the mean of ``values`` (n - 1 degrees of freedom); ``None`` for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    centre = statistics.fmean(values)
    half = float(t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return centre - half, centre + half


def loss_ratio_interval(new_losses: Sequence[float], old_losses: Sequence[float]) -> tuple[float, float] | None:
    """95% interval of ``exp(mean(new) - mean(old))``, the ratio of two perplexities over the same documents, from the
    per-document mean losses: :func:`mean_interval` of their differences, exponentiated. ``None`` unless both hold
    the same number (two or more) of documents."""
    if len(old_losses) != len(new_losses):
        return None
    interval = mean_interval([a - b for a, b in zip(new_losses, old_losses, strict=True)])
    return None if interval is None else (math.exp(interval[0]), math.exp(interval[1]))


def _counted(new: float, old: float, new_rate: Rate | None, old_rate: Rate | None) -> tuple[Rate, Rate] | None:
    """Both rates, when both are counted and each is its score (to half a prompt: a score that is not the fraction of
    its counts, e.g. a mean of unequal cells, is compared without an interval)."""
    if not (new_rate and new_rate.n and old_rate and old_rate.n):
        return None
    if abs(new_rate.value - new) > 0.5 / new_rate.n or abs(old_rate.value - old) > 0.5 / old_rate.n:
        return None
    return new_rate, old_rate


@dataclass(frozen=True)
class Comparison:
    """A final score against the one before (short-context retention, the report's "final - before"): their ratio
    or difference, with its 95% interval where both scores are counted rates; or the ratio of two perplexities, with
    its interval where both kept their documents' losses."""

    value: float
    interval: tuple[float, float] | None = None
    signed: bool = False
    """A difference: printed with its sign."""

    @classmethod
    def ratio(cls, new: float, old: float, new_rate: Rate | None = None, old_rate: Rate | None = None) -> Comparison:
        """``new / old`` (``old`` not 0), with :func:`ratio_interval` of the rates."""
        rates = _counted(new, old, new_rate, old_rate)
        return cls(new / old, ratio_interval(*rates) if rates else None)

    @classmethod
    def difference(cls, new: float, old: float, new_rate: Rate | None = None,
                   old_rate: Rate | None = None) -> Comparison:
        """``new - old``, with :func:`difference_interval` of the rates."""
        rates = _counted(new, old, new_rate, old_rate)
        return cls(new - old, difference_interval(*rates) if rates else None, signed=True)

    @classmethod
    def loss_ratio(cls, new_loss: float, old_loss: float, new_documents: Sequence[float] | None = None,
                   old_documents: Sequence[float] | None = None) -> Comparison:
        """The ratio of two perplexities, ``exp(new_loss - old_loss)`` (mean losses), with
        :func:`loss_ratio_interval` of the per-document mean losses where both evaluations kept them."""
        return cls(math.exp(new_loss - old_loss), loss_ratio_interval(new_documents, old_documents)
                   if new_documents is not None and old_documents is not None else None)

    def format(self, digits: int = 2) -> str:
        """``1.03 [0.93, 1.14]``, ``+0.20 [+0.02, +0.36]``; the value alone without an interval."""
        return with_interval(self.value, self.interval, digits, self.signed)

    def __str__(self) -> str:
        return self.format()


def total(rates: Iterable[Rate]) -> Rate | None:
    """Pooled counts of several rates; ``None`` when any of them has no counts."""
    rates = list(rates)
    counts = [(r.correct, r.n) for r in rates if r.correct is not None and r.n is not None]
    if not rates or len(counts) < len(rates):
        return None
    return Rate.of(sum(correct for correct, _ in counts), sum(n for _, n in counts))


def common_n(rate_maps: Iterable[Mapping[Any, Rate]]) -> int | None:
    """The ``n`` of every rate when it is the same for all and known, else ``None``."""
    counts = {rate.n for rates in rate_maps for rate in rates.values()}
    return counts.pop() if len(counts) == 1 and None not in counts else None


def niah_rates(summary: Mapping[str, Any], cells: Iterable[Mapping[str, Any]] | None = None) -> dict[int, Rate]:
    """Accuracy per length of a needle grid (a niah entry or one rope_compare setting).

    Uses the recorded counts, else counts the ``cells`` (``None``: the summary's own), else the scores alone.
    """
    counts, hits = summary.get("n_by_length"), summary.get("correct_by_length")
    if isinstance(counts, Mapping) and isinstance(hits, Mapping):
        return {int(length): Rate.of(int(hits[length]), int(n)) for length, n in counts.items() if length in hits}
    tallies: dict[int, list[int]] = {}
    for cell in summary.get("cells", []) if cells is None else cells:
        if "correct" in cell:
            tally = tallies.setdefault(int(cell["length"]), [0, 0])
            tally[0] += bool(cell["correct"])
            tally[1] += 1
    if tallies:
        return {length: Rate.of(k, n) for length, (k, n) in sorted(tallies.items())}
    return {int(length): Rate(float(value)) for length, value in (summary.get("scores_by_length") or {}).items()}


def niah_overall(summary: Mapping[str, Any], cells: Iterable[Mapping[str, Any]] | None = None) -> Rate | None:
    """Accuracy over the whole grid (every prompt counted once)."""
    if isinstance(summary.get("n"), int) and isinstance(summary.get("correct"), int):
        return Rate.of(summary["correct"], summary["n"])
    pooled = total(niah_rates(summary, cells).values())
    if pooled is not None:
        return pooled
    score = summary.get("score")
    return Rate(float(score)) if is_number(score) else None


def lm_eval_rates(entry: Mapping[str, Any], counts: Mapping[str, int] | None = None) -> dict[tuple[str, str], Rate]:
    """(lm-eval task, metric) -> rate for the fraction-correct metrics; ``counts``: documents per task when known
    (default: the entry's ``n``)."""
    counts = entry.get("n") if counts is None else counts
    rates: dict[tuple[str, str], Rate] = {}
    for task, values in (entry.get("metrics") or {}).items():
        n = (counts or {}).get(task)
        for metric, value in values.items():
            if metric.split(",")[0] in BINARY_METRICS and is_number(value) and 0.0 <= value <= 1.0:
                rates[(task, metric)] = Rate.of(round(value * n), n) if isinstance(n, int) and n > 0 else Rate(value)
    return rates


RULER_THRESHOLD = 0.856
"""RULER's bar for the effective context length: Llama-2-7B's score at 4K."""


def effective_length(scores_by_length: Mapping[Any, float], threshold: float) -> int | None:
    """The effective length (RULER): the longest tested length whose score, and every shorter tested length's, is at
    least ``threshold``; ``None`` when even the shortest is below it. Lengths may be ints or their strings."""
    best = None
    for length in sorted(scores_by_length, key=int):
        if scores_by_length[length] < threshold:
            break
        best = int(length)
    return best


def length_text(value: int | None) -> str:
    """An effective length as printed: ``none`` when no length reaches the threshold."""
    return "none" if value is None else str(value)
