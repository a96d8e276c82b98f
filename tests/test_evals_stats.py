"""Wilson intervals and the counts behind every accuracy the report shows; the intervals of ratios of two."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.evals.niah import NiahTask, grid_summary
from toolkit.evals.stats import (
    Comparison,
    Rate,
    difference_interval,
    lm_eval_rates,
    loss_ratio_interval,
    mean_interval,
    niah_overall,
    niah_rates,
    ratio_interval,
    total,
    wilson,
)


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (1, 1, 0.2065, 1.0),
    (90, 100, 0.8256, 0.9448),
])
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_without_trials_is_the_whole_range() -> None:
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_z_widens_the_interval() -> None:
    low95, high95 = wilson(50, 100)
    low99, high99 = wilson(50, 100, z=2.576)
    assert low99 < low95 and high99 > high95


def test_format() -> None:
    assert Rate.of(97, 100).format() == "0.97 [0.92, 0.99] n=100"
    assert Rate.of(50, 100).format(digits=3, with_n=False) == "0.500 [0.404, 0.596]"
    assert str(Rate(0.9)) == "0.90 (n unknown)"
    assert Rate(0.9).interval is None
    assert total([Rate.of(1, 2), Rate.of(3, 4)]) == Rate.of(4, 6)
    assert total([Rate.of(1, 2), Rate(0.5)]) is None


def test_grid_summary_records_counts() -> None:
    cells = [{"length": length, "depth": depth, "sample": s, "correct": (length == 128 or s == 0)}
             for length in (128, 256) for depth in (0.0, 1.0) for s in range(3)]
    # kept by a resumed run from earlier settings (a fourth sample, another length): not of this grid
    stale = [{"length": 256, "depth": 0.0, "sample": 3, "correct": True},
             {"length": 512, "depth": 0.0, "sample": 0, "correct": False}]
    task = NiahTask(type="niah", lengths=[128, 256], depths=[0.0, 1.0], samples=3)
    summary = grid_summary(cells + stale, task)
    assert summary["n_by_length"] == {"128": 6, "256": 6}
    assert summary["correct_by_length"] == {"128": 6, "256": 2}
    assert (summary["n"], summary["correct"]) == (12, 8)
    assert summary["scores_by_length"]["256"] == pytest.approx(2 / 6)  # the old keys are unchanged
    assert summary["score"] == summary["mean"] == pytest.approx(8 / 12)
    rates = niah_rates(summary)
    assert rates == {128: Rate.of(6, 6), 256: Rate.of(2, 6)}
    assert niah_overall(summary) == Rate.of(8, 12)


def test_counts_of_older_results_come_from_their_cells() -> None:
    cells = [{"length": 128, "depth": 0.0, "sample": s, "correct": s < 3} for s in range(4)]
    entry = {"score": 0.75, "scores_by_length": {"128": 0.75}, "cells": cells}
    assert niah_rates(entry) == {128: Rate.of(3, 4)}
    assert niah_overall(entry) == Rate.of(3, 4)
    bare = {"score": 0.75, "scores_by_length": {"128": 0.75}}
    assert niah_rates(bare) == {128: Rate(0.75)}
    assert niah_overall(bare) == Rate(0.75)


def test_lm_eval_rates_only_for_fraction_correct_metrics() -> None:
    entry = {"metrics": {"a": {"acc,none": 0.5, "perplexity,none": 12.0}, "b": {"exact_match,number": 0.25}},
             "n": {"a": 40}}
    rates = lm_eval_rates(entry)
    assert rates[("a", "acc,none")] == Rate.of(20, 40)
    assert rates[("b", "exact_match,number")] == Rate(0.25)  # n unknown
    assert ("a", "perplexity,none") not in rates


@pytest.mark.parametrize("interval", [ratio_interval, difference_interval])
@pytest.mark.parametrize(("new", "old", "n"), [(0.9, 0.9, 100), (0.95, 0.9, 40), (0.6, 0.8, 50), (0.99, 0.97, 200),
                                               (0.3, 0.5, 20), (0.1, 0.05, 100)])
def test_the_interval_of_two_scores_covers_the_truth_95_percent_of_the_time(interval, new: float, old: float,
                                                                           n: int) -> None:
    """Two independent evaluations of n prompts drawn 4,000 times: the interval holds new / old (new - old) in 93-97%
    of them."""
    truth = new / old if interval is ratio_interval else new - old
    rng = np.random.default_rng(0)
    draws = [(int(a), int(b)) for a, b in zip(rng.binomial(n, new, 4000), rng.binomial(n, old, 4000), strict=True)]
    intervals = [interval(Rate.of(a, n), Rate.of(b, n)) for a, b in draws if b]
    covered = [low <= truth <= high for low, high in filter(None, intervals)]
    assert len(covered) == len(intervals) > 3950
    assert 0.93 <= sum(covered) / len(covered) <= 0.97


def test_ratio_interval_of_two_perfect_scores_is_the_ratio_of_their_wilson_ends() -> None:
    low, _ = wilson(200, 200)
    assert ratio_interval(Rate.of(200, 200), Rate.of(200, 200)) == pytest.approx((low, 1 / low))


def test_ratio_interval_needs_counts_and_a_score_before() -> None:
    assert ratio_interval(Rate(0.9), Rate.of(9, 10)) is None and ratio_interval(Rate.of(9, 10), Rate(0.9)) is None
    assert ratio_interval(Rate.of(5, 10), Rate.of(0, 10)) is None
    nothing_kept = ratio_interval(Rate.of(0, 10), Rate.of(5, 10))
    assert nothing_kept is not None and nothing_kept[0] == 0.0 and 0 < nothing_kept[1] < 1


def test_more_prompts_narrow_the_ratio_interval() -> None:
    narrow, wide = ratio_interval(Rate.of(90, 100), Rate.of(90, 100)), ratio_interval(Rate.of(9, 10), Rate.of(9, 10))
    assert narrow is not None and wide is not None
    assert wide[0] < narrow[0] < 1 < narrow[1] < wide[1] < math.inf
    rare = ratio_interval(Rate.of(1, 20), Rate.of(1, 20))  # an upper Wilson end past twice the rate
    assert rare is not None and 0.05 < rare[0] < 1 < rare[1] < 20


def test_the_difference_of_two_perfect_scores_reaches_down_to_a_wilson_end() -> None:
    low, _ = wilson(40, 40)
    assert difference_interval(Rate.of(40, 40), Rate.of(40, 40)) == pytest.approx((low - 1, 1 - low))
    assert difference_interval(Rate(0.9), Rate.of(9, 10)) is None


def test_a_comparison_prints_with_its_interval_or_alone() -> None:
    assert Comparison.difference(0.75, 0.55, Rate.of(30, 40), Rate.of(22, 40)).format() == "+0.20 [-0.01, +0.39]"
    assert Comparison.difference(0.5, 0.95).format(3) == "-0.450"
    assert Comparison.difference(0.7, 0.701).format() == "+0.00"  # two nearly equal scores: no "-0.00"
    assert Comparison.ratio(0.9, 0.9, Rate.of(36, 40), Rate.of(36, 40)).format() == "1.00 [0.84, 1.18]"
    assert str(Comparison.ratio(0.9, 0.9)) == "1.00" and str(Comparison.ratio(0.9, 0.9, Rate(0.9), Rate(0.9))) == "1.00"
    assert str(Comparison.ratio(0.88, 0.9, Rate.of(36, 40), Rate.of(36, 40))) == "0.98"  # not 36/40: none


def test_the_interval_of_a_mean_is_students_t() -> None:
    # mean 2.5, sd sqrt(5/3) = 1.29099, t(0.975, 3 df) = 3.18245: half 3.18245 x 1.29099 / sqrt(4) = 2.05426
    assert mean_interval([1.0, 2.0, 3.0, 4.0]) == pytest.approx((0.44574, 4.55426), abs=1e-5)
    assert mean_interval([2.0, 4.0]) == pytest.approx((-9.7062, 15.7062), abs=1e-4)  # t(0.975, 1 df) = 12.7062
    assert mean_interval([5.0]) is None and mean_interval([]) is None


def test_the_perplexity_ratio_interval_is_the_paired_t_interval_exponentiated() -> None:
    interval = loss_ratio_interval([1.0, 2.0, 3.0], [0.5, 1.5, 2.0])  # differences 0.5, 0.5, 1.0
    half = 4.302653 * math.sqrt(1 / 12) / math.sqrt(3)  # t(0.975, 2 df) x sd / sqrt(n)
    assert interval == pytest.approx((math.exp(2 / 3 - half), math.exp(2 / 3 + half)), rel=1e-5)
    assert loss_ratio_interval([1.0], [0.5]) is None and loss_ratio_interval([1.0, 2.0], [1.0]) is None
    ratio = Comparison.loss_ratio(2.0, 2.1, [1.9, 2.1], [2.0, 2.2])
    assert ratio.value == pytest.approx(math.exp(-0.1)) and ratio.format() == "0.90 [0.90, 0.90]"
    assert Comparison.loss_ratio(2.0, 2.1).interval is None  # results kept no documents' losses


@pytest.mark.parametrize(("n", "shift"), [(8, -0.1), (32, 0.02), (4, 0.0)])
def test_the_perplexity_ratio_interval_covers_the_truth_95_percent_of_the_time(n: int, shift: float) -> None:
    """Documents of unequal difficulty (sd 0.5 in mean loss) read by two models whose losses differ by ``shift`` on
    average and by 0.05 per document, drawn 4,000 times: the interval holds exp(shift) in 93-97% of them."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(3.0, 0.5, (4000, n))
    new = difficulty + shift + rng.normal(0, 0.05, (4000, n))
    intervals = [loss_ratio_interval(list(a), list(b)) for a, b in zip(new, difficulty, strict=True)]
    covered = [low <= math.exp(shift) <= high for low, high in filter(None, intervals)]
    assert len(covered) == 4000 and 0.93 <= sum(covered) / 4000 <= 0.97
