"""A task's main score as a report table cell: its type's ``score_rate`` with the 95% Wilson interval and n where
the counts are known, else its ``score_cell``, else the score alone."""

from __future__ import annotations

from toolkit.evals.registry import TASK_TYPES
from toolkit.evals.stats import Rate
from toolkit.evals.task_type import Entry
from toolkit.formatting.numbers import fmt, is_number
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
