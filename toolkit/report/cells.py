"""A task's main score as a report table cell: its type's ``score_cell`` where it shows more than the rate, else its
``score_rate`` with the 95% Wilson interval and n where the counts are known, else the score alone; and two such
scores compared (:func:`compare`), with the interval their counts give."""

from __future__ import annotations

from collections.abc import Callable

from toolkit.evals.registry import TASK_TYPES
from toolkit.evals.stats import Comparison, Rate
from toolkit.evals.task_type import Entry
from toolkit.formatting.numbers import fmt, is_number, number
from toolkit.run_folder import Run

Scored = tuple[str, Entry | None]
"""A task's entry at one evaluation tag: ``(tag, entry)``."""


def score_rate(run: Run, tag: str, entry: Entry | None) -> Rate | None:
    """A task's main score as a counted rate, where its type counts it (never for an entry cut short)."""
    kind = TASK_TYPES.get((entry or {}).get("type") or "")
    if entry is None or kind is None or kind.score_rate is None or entry.get("complete") is False:
        return None
    return kind.score_rate(run, tag, entry)


def score_cell(run: Run, tag: str, entry: Entry | None) -> str:
    """A task's main score as shown in tables: with its interval and n where they are known."""
    score = (entry or {}).get("score")
    if entry is None or not is_number(score):
        return "-"
    kind = TASK_TYPES.get(entry.get("type") or "")
    if kind and kind.score_cell and entry.get("complete") is not False:  # one cut short: its score
        return kind.score_cell(run, tag, entry)
    rate = score_rate(run, tag, entry)
    return rate.format() if rate is not None else fmt(score)


def compare(run: Run, how: Callable[..., Comparison], final: Scored, before: Scored) -> Comparison | None:
    """The final score against the one before (``how``: ``Comparison.difference`` or ``Comparison.ratio``), with the
    interval of their rates where both are counted; ``None`` without both scores."""
    (final_tag, new), (before_tag, old) = final, before
    new_score, old_score = (number((entry or {}).get("score")) for entry in (new, old))
    if new_score is None or old_score is None:
        return None
    return how(new_score, old_score, score_rate(run, final_tag, new), score_rate(run, before_tag, old))


def difference_cell(run: Run, final: Scored, before: Scored) -> str:
    """The final score - the score before, with its interval where both are counted rates; ``-`` without both."""
    difference = compare(run, Comparison.difference, final, before)
    return "-" if difference is None else difference.format()
