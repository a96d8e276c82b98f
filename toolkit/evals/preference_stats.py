"""Scores of three-way preference predictions (A better, B better, tie), as the Chatbot Arena competition scores
them: log loss with probabilities clipped to [1e-15, 1], accuracy of the most probable class, and calibration.

All over the same ``n`` rows. The log loss carries a 95% normal interval over rows (mean +- 1.96 standard errors),
the accuracy a 95% Wilson interval (:func:`toolkit.evals.stats.wilson`); calibration is the expected calibration
error over :data:`BINS` equal-width bins of the most probable class's probability, a point estimate without an
interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from toolkit.data.arena import WINNER_COLUMNS
from toolkit.evals.stats import wilson

CLASSES = WINNER_COLUMNS
"""The three classes, named by the competition's label columns."""
EPSILON = 1e-15
"""The competition clips probabilities to [EPSILON, 1] before taking logs."""
WORST_LOG_LOSS = -math.log(EPSILON / (2 + EPSILON))
"""A row's largest log loss: its label clipped to EPSILON, the other two classes at 1."""
BINS = 10
"""Equal-width bins of the expected calibration error."""


@dataclass(frozen=True)
class PreferenceScores:
    """Log loss (lower is better), accuracy and expected calibration error over ``n`` rows."""

    n: int
    log_loss: float
    log_loss_ci: tuple[float, float]
    accuracy: float
    accuracy_ci: tuple[float, float]
    ece: float


def _checked(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> None:
    if len(probs) != len(labels) or not labels:
        raise ValueError(f"{len(probs)} predictions for {len(labels)} labels (need the same number, at least one)")
    for row in probs:
        if len(row) != len(CLASSES):
            raise ValueError(f"a prediction has {len(row)} probabilities, not {len(CLASSES)}")
    if any(label not in range(len(CLASSES)) for label in labels):
        raise ValueError(f"labels must be 0, 1 or 2 (got {sorted(set(labels))})")


def row_log_losses(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> list[float]:
    """Each row's ``-log p[label]``, with the row normalised to sum to 1 after clipping (as the competition does)."""
    losses = []
    for row, label in zip(probs, labels, strict=True):
        clipped = [min(max(p, EPSILON), 1.0) for p in row]
        losses.append(-math.log(clipped[label] / sum(clipped)))
    return losses


def _mean_interval(losses: list[float]) -> tuple[float, tuple[float, float]]:
    """The mean log loss and its normal 95% interval, within the range a log loss can take; one row gives no spread,
    so its interval is that whole range."""
    n = len(losses)
    mean = sum(losses) / n
    if n == 1:
        return mean, (0.0, WORST_LOG_LOSS)
    half = 1.96 * math.sqrt(sum((v - mean) ** 2 for v in losses) / (n - 1)) / math.sqrt(n)
    return mean, (max(mean - half, 0.0), min(mean + half, WORST_LOG_LOSS))


def most_probable(probs: Sequence[float]) -> int:
    """The class with the highest probability, the first on a tie (the class that accuracy and kappa count)."""
    return max(range(len(probs)), key=lambda k: probs[k])


def expected_calibration_error(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Mean |accuracy - confidence| over :data:`BINS` equal-width bins of the top probability, weighted by the rows
    in each."""
    tallies = [[0, 0.0, 0] for _ in range(BINS)]  # rows, summed confidence, correct
    for row, label in zip(probs, labels, strict=True):
        top = most_probable(row)
        tally = tallies[min(int(row[top] * BINS), BINS - 1)]
        tally[0] += 1
        tally[1] += row[top]
        tally[2] += top == label
    return sum(abs(correct - confidence) for _, confidence, correct in tallies) / len(labels)


def preference_scores(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> PreferenceScores:
    """Log loss, accuracy (the most probable class) and calibration error of ``probs`` (rows of three
    probabilities in :data:`CLASSES` order) against ``labels`` (0, 1 or 2), with 95% intervals."""
    _checked(probs, labels)
    log_loss, log_loss_ci = _mean_interval(row_log_losses(probs, labels))
    correct = sum(most_probable(row) == label for row, label in zip(probs, labels, strict=True))
    n = len(labels)
    return PreferenceScores(n, log_loss, log_loss_ci, correct / n, wilson(correct, n),
                            expected_calibration_error(probs, labels))


def prior_probs(labels: Sequence[int]) -> tuple[float, float, float]:
    """The class frequencies of ``labels``: the baseline that predicts the same probabilities for every row."""
    _checked([(0.0, 0.0, 0.0)] * len(labels), labels)
    a, b, tie = (sum(label == k for label in labels) / len(labels) for k in range(len(CLASSES)))
    return a, b, tie


def unswapped(row: Sequence[float]) -> tuple[float, float, float]:
    """A prediction for the swapped comparison (B shown as A) in the original order: A and B exchanged back."""
    return row[1], row[0], row[2]


def swap_consistency(probs: Sequence[Sequence[float]], swapped_probs: Sequence[Sequence[float]]) -> float:
    """Mean absolute difference, over rows and the three classes, between each prediction and the prediction for
    the swapped comparison exchanged back; 0 when the model ignores which answer comes first."""
    if len(probs) != len(swapped_probs) or not probs:
        raise ValueError(f"{len(probs)} predictions and {len(swapped_probs)} swapped ones (need the same number)")
    differences = [abs(p - q) for row, other in zip(probs, swapped_probs, strict=True)
                   for p, q in zip(row, unswapped(other), strict=True)]
    return sum(differences) / len(differences)
