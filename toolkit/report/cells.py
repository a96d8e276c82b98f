"""A task's main score as a report table cell: its type's ``score_rate`` with the 95% Wilson interval and n where
the counts are known, else its ``score_cell``, else the score alone; and the difference of two such scores."""

from __future__ import annotations

from toolkit.evals.registry import TASK_TYPES
from toolkit.evals.stats import Comparison, Rate
from toolkit.evals.task_type import Entry
from toolkit.formatting.numbers import fmt, is_number, number
from toolkit.run_folder import Run


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
    if (rate := score_rate(run, tag, entry)) is not None:
        return rate.format()
    kind = TASK_TYPES.get(entry.get("type") or "")
    cell = kind.score_cell if kind and entry.get("complete") is not False else None  # one cut short: its score
    return cell(run, tag, entry) if cell else fmt(score)


def difference_cell(run: Run, final: tuple[str, Entry | None], before: tuple[str, Entry | None]) -> str:
    """The final score - the score before, with its interval where both are counted rates; ``-`` without both."""
    (final_tag, new), (before_tag, old) = final, before
    new_score, old_score = (number((entry or {}).get("score")) for entry in (new, old))
    if new_score is None or old_score is None:
        return "-"
    return Comparison.difference(new_score, old_score, score_rate(run, final_tag, new),
                                 score_rate(run, before_tag, old)).format()
