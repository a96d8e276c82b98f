"""The scores of a ``jury_pairwise`` task: per judge, for the panel and for the class prior, the classifier's
metrics on the same rows (:func:`toolkit.evals.preference_stats.preference_scores`: log loss and accuracy with
95% intervals, ECE, n) plus Cohen's kappa of the most probable class against the human labels (95% bootstrap interval),
swap consistency (with ``swap``), and calls, tokens and cost (:mod:`toolkit.evals.jury_panel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pydantic import with_config
from typing_extensions import TypedDict

from toolkit.evals.agreement import fleiss_kappa, kappa_with_interval
from toolkit.evals.jury_pairwise_panel import (
    CLASS_IDS,
    ORDERS,
    cell_votes,
    complete_votes,
    pool,
    usage_votes,
    verdicts,
)
from toolkit.evals.jury_panel import Cell, judge_usage, panel_usage
from toolkit.evals.jury_spec import JudgeSpec
from toolkit.evals.preference_stats import most_probable, preference_scores, swap_consistency
from toolkit.file_reading import SHAPE_CONFIG

Probs = Sequence[Sequence[float]]


@with_config(SHAPE_CONFIG)
class Scores(TypedDict, total=False):
    """:func:`scores_of`'s fields (but ``n``) as the results hold them, where recorded: what the report's preference
    table reads of a predictor."""

    log_loss: float | None
    log_loss_ci: list[float] | None
    accuracy: float | None
    accuracy_ci: list[float] | None
    correct: int
    ece: float | None
    kappa: float | None
    kappa_ci: list[float] | None
    kappa_n: int


def scores_of(probs: Probs, labels: Sequence[int]) -> dict[str, Any]:
    """``n``, ``log_loss`` (+ ``_ci``), ``accuracy`` (+ ``_ci``), ``correct``, ``ece``, ``kappa`` (+ ``_ci``,
    ``_n``): the row the report's preference table shows."""
    scores = preference_scores(probs, labels)
    kappa = kappa_with_interval([most_probable(p) for p in probs], labels, CLASS_IDS)
    return {**asdict(scores), "correct": round(scores.accuracy * scores.n), "kappa": kappa.value,
            "kappa_ci": kappa.ci, "kappa_n": kappa.n}


def _scores(cells: Sequence[Cell], names: Sequence[str], swap: bool, smoothing: float) -> dict[str, Any]:
    labels = [int(cell["human"]) for cell in cells]
    votes = [cell_votes(cell, names) for cell in cells]
    found = scores_of([pool(row, smoothing) for row in votes], labels)
    found["unjudged"] = sum(not row for row in votes)
    if swap:
        original, swapped = ([pool(verdicts(cell, names, order, back=False), smoothing) for cell in cells]
                             for order in ORDERS)
        found["swap_consistency"] = swap_consistency(original, swapped)
    return found


def pairwise_summary(cells: Sequence[Cell], judges: Sequence[JudgeSpec], swap: bool,
                     smoothing: float) -> dict[str, Any]:
    """Per judge (its votes alone, pooled the same way) and for the panel: the scores, unjudged rows, swap
    consistency and usage; the panel also Fleiss' kappa among the judges over the (row, order) all answered."""
    names = [judge.name for judge in judges]
    stats = {judge.name: {**judge_usage(judge, usage_votes(cells, judge.name)),
                          **_scores(cells, [judge.name], swap, smoothing)} for judge in judges}
    complete = complete_votes(cells, names)
    panel = {**_scores(cells, names, swap, smoothing), **panel_usage(stats.values()),
             "fleiss_kappa": fleiss_kappa(complete, CLASS_IDS), "fleiss_n": len(complete)}
    return {"score": panel["accuracy"], "n": panel["n"], "correct": panel["correct"], "swap": swap,
            "smoothing": smoothing, "panel": panel, "judges": stats}


def prior_summary(prior: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    """The baseline that gives every row the training labels' class frequencies ``prior``."""
    return {"probs": list(prior), **scores_of([prior] * len(labels), labels)}
