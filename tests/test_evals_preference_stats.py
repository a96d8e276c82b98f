"""Scores of three-way preference predictions: log loss as the competition computes it, accuracy, calibration,
the class prior and swap consistency, checked against numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from toolkit.evals.preference_stats import (
    CLASSES,
    expected_calibration_error,
    preference_scores,
    prior_probs,
    swap_consistency,
)


def test_log_loss_and_accuracy_by_hand() -> None:
    probs = [(0.7, 0.2, 0.1), (0.1, 0.6, 0.3), (0.5, 0.25, 0.25), (0.2, 0.2, 0.6)]
    labels = [0, 1, 2, 2]
    scores = preference_scores(probs, labels)
    losses = [-math.log(0.7), -math.log(0.6), -math.log(0.25), -math.log(0.6)]
    mean = sum(losses) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / 3)
    assert scores.n == 4
    assert scores.log_loss == pytest.approx(mean)
    assert scores.log_loss_ci == pytest.approx((mean - 1.96 * sd / 2, mean + 1.96 * sd / 2))
    assert scores.accuracy == 0.75
    assert scores.accuracy_ci == pytest.approx((0.3006, 0.9544), abs=1e-4)  # Wilson, 3 of 4


def test_log_loss_clips_like_the_competition() -> None:
    scores = preference_scores([(1.0, 0.0, 0.0)], [1])
    assert scores.log_loss == pytest.approx(-math.log(1e-15 / (1 + 2e-15)))


def test_log_loss_interval_stays_within_what_a_log_loss_can_be() -> None:
    """One row has no spread: its interval is the whole range (it was zero wide); a normal interval whose lower end
    falls below zero is cut there."""
    worst = -math.log(1e-15 / (2 + 1e-15))
    assert preference_scores([(0.7, 0.2, 0.1)], [0]).log_loss_ci == pytest.approx((0.0, worst))
    assert preference_scores([(0.999, 5e-4, 5e-4), (0.6, 0.2, 0.2)], [0, 0]).log_loss_ci[0] == 0.0


def test_calibration_error() -> None:
    # bin 0.9: two rows at confidence 0.9, one right -> |0.5 - 0.9|; bin 0.5: one row at 0.5, right -> 0.5
    probs = [(0.9, 0.05, 0.05), (0.9, 0.05, 0.05), (0.25, 0.5, 0.25)]
    assert expected_calibration_error(probs, [0, 1, 1]) == pytest.approx((2 * 0.4 + 0.5) / 3)
    assert preference_scores([(1.0, 0.0, 0.0)] * 3, [0, 0, 0]).ece == pytest.approx(0.0)


def test_prior_is_the_class_frequencies() -> None:
    labels = [0, 0, 1, 2, 0, 1, 2, 2]
    prior = prior_probs(labels)
    assert prior == pytest.approx((3 / 8, 2 / 8, 3 / 8))
    entropy = -sum(p * math.log(p) for p in prior)
    assert preference_scores([prior] * len(labels), labels).log_loss == pytest.approx(entropy)


def test_swap_consistency() -> None:
    probs = [(0.6, 0.3, 0.1), (0.2, 0.2, 0.6)]
    assert swap_consistency(probs, [(0.3, 0.6, 0.1), (0.2, 0.2, 0.6)]) == 0.0
    assert swap_consistency(probs, probs) == pytest.approx((0.3 + 0.3) / 6)


def test_mistakes_are_refused() -> None:
    assert CLASSES == ("winner_model_a", "winner_model_b", "winner_tie")
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        preference_scores([(1, 0, 0), (0, 1, 0)], [0])
    with pytest.raises(ValueError, match="labels must be 0, 1 or 2"):
        preference_scores([(1, 0, 0)], [3])
    with pytest.raises(ValueError, match="not 3"):
        preference_scores([(1, 0)], [0])
