"""The "Evaluation" table's cells show each task's ``score`` (the quantity "final - ref" and the retention ratio
subtract), counted over the task as it is now; the retention table rates what the verdict rates, by its rule."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.arena_fixture import TEST_ROWS
from tests.test_verdict import SPEC, fake_run
from toolkit.data.arena import write_arena
from toolkit.evals import preference
from toolkit.evals.jury_pairwise_table import side_by_side_section
from toolkit.evals.lmeval_bridge import summarize
from toolkit.evals.preference import PreferenceTask, run_preference
from toolkit.evals.preference_model import Predictions
from toolkit.evals.preference_stats import unswapped
from toolkit.evals.results import SuiteResults
from toolkit.evals.ruler import RulerTask, ruler_summary
from toolkit.evals.stats import Rate, ratio_interval
from toolkit.formatting.blocks import Table
from toolkit.report.cells import score_cell
from toolkit.report.report import retention_section, scores_section
from toolkit.report.verdict import compute_verdict
from toolkit.run_folder import Run, RunInfo, load_run

LABELS = [int(row.winner or 0) for row in TEST_ROWS]  # 0 A, 1 B, 2 tie: [0, 0, 1, 0, 2, 1, 0, 1, 2]
FAVOURING = [(0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6)]
"""Probabilities that favour A, B or the tie."""


def _run(evals: dict[str, dict[str, Any]]) -> Run:
    """A run folder's results without files: tag -> task key -> entry, all in suite ``s``."""
    return Run(Path("."), None, RunInfo(), [], {tag: {"s": {"tasks": tasks}} for tag, tasks in evals.items()})


def _table(blocks: list) -> Table:
    [table] = [block for block in blocks if isinstance(block, Table)]
    return table


def _preference_entry(folder: Path, monkeypatch, predicted: list[int]) -> dict[str, Any]:
    """The preference task's entry, evaluated into ``folder``, when the model favours the classes ``predicted``."""
    probs = [FAVOURING[c] for c in predicted]
    found = Predictions(probs, [unswapped(p) for p in probs], 2 * len(probs), 0, 0)  # both orders agree
    monkeypatch.setattr(preference, "predict_rows", lambda *args, **kwargs: found)
    folder.mkdir()
    data = write_arena(TEST_ROWS, folder / "test.csv")
    task = PreferenceTask(type="preference", name="heldout", data=str(data))
    results = SuiteResults(folder / "s.json", "s", "t", "m", "fingerprint")
    context: Any = SimpleNamespace(suite="s", model=None, tokenizer=None)
    return run_preference(task, context, results)


def test_the_preference_cell_is_its_score_the_accuracy_with_kappa_recorded(tmp_path: Path, monkeypatch) -> None:
    guessed = _preference_entry(tmp_path / "base", monkeypatch, [0] * 6 + [1] * 3)  # right on rows 1, 2, 4 and 8
    perfect = _preference_entry(tmp_path / "final", monkeypatch, LABELS)
    assert (guessed["score"], guessed["correct"], guessed["n"]) == (pytest.approx(4 / 9), 4, 9)
    # Cohen's kappa: agreement 4/9, by chance (6/9)(4/9) + (3/9)(3/9) = 33/81 -> (36 - 33) / (81 - 33)
    assert guessed["kappa"] == pytest.approx(3 / 48) and guessed["kappa_n"] == 9
    jury = {"type": "jury", "pooling": "average", "n": 2, "panel": {"unjudged": 0}}
    run = _run({"base": {"heldout": guessed, "jury": {**jury, "score": 0.5625, "mean_rating": 3.25}},
                "stage-0-long": {"heldout": perfect, "jury": {**jury, "score": 0.75, "mean_rating": 4.0}}})
    rows = _table(scores_section(run)).rows
    # Wilson intervals of 4/9 and 9/9; final - base subtracts the scores the cells show: 1 - 4/9, 0.75 - 0.5625
    assert rows == [["s / heldout", "0.44 [0.19, 0.73] n=9", "1.00 [0.70, 1.00] n=9", "+0.56 [+0.14, +0.81]"],
                    ["s / jury", "0.56 (mean rating 3.25/5) n=2", "0.75 (mean rating 4.00/5) n=2", "+0.19"]]
    at_base = [block for block in side_by_side_section(run) if isinstance(block, Table)][0]
    [classifier] = [row for row in at_base.rows if row[0] == "s/heldout: fine-tuned classifier"]
    assert classifier[3] == "0.444 [0.189, 0.733]" and classifier[5].startswith("0.062 [")  # kappa, not "-"

    older = {key: value for key, value in guessed.items() if key != "correct"}  # recorded before the count was kept
    assert score_cell(run, "base", older) == "0.44 [0.19, 0.73] n=9"  # counted back from the accuracy and n
    voted = {**jury, "pooling": "max", "panel": {"unjudged": 1}}
    run = _run({"base": {"jury": {**voted, "score": 0.5, "correct": 1}}, "stage-0-long": {"jury": {
        **voted, "score": 1.0, "correct": 2}}})
    assert _table(scores_section(run)).rows == [["s / jury", "0.50 [0.09, 0.91] n=2 (1 unjudged)",
                                                 "1.00 [0.34, 1.00] n=2 (1 unjudged)", "+0.50 [-0.27, +0.91]"]]


def test_the_lm_eval_cell_pools_documents_only_for_a_single_task() -> None:
    output = {"results": {"a": {"acc,none": 0.5, "acc_stderr,none": 0.16}, "b": {"acc,none": 1.0}}}
    metrics, score = summarize(output, None)
    both = {"type": "lm_eval", "score": score, "metrics": metrics, "n": {"a": 10, "b": 30}}
    one = {**both, "score": 0.5, "metrics": {"a": metrics["a"]}, "n": {"a": 10}}
    run = _run({})
    assert score == 0.75 and score_cell(run, "base", both) == "0.750"  # the mean over tasks, not 35/40 pooled
    assert score_cell(run, "base", one) == "0.50 [0.24, 0.76] n=10"  # Wilson interval of 5/10


def test_the_ruler_cell_counts_the_task_as_it_is_now() -> None:
    task = RulerTask(type="ruler", tasks=["niah_single"], lengths=[1024], samples=2)
    now = [{"task": "niah_single", "length": 1024, "sample": s, "score": 1.0} for s in range(2)]
    stale = [{"task": "niah_single", "length": 4096, "sample": s, "score": 0.0} for s in range(2)]
    stale += [{"task": "niah_single", "length": 1024, "sample": 2, "score": 0.0},  # of an earlier samples: 3
              {"task": "fwe", "length": 1024, "sample": 0, "score": 0.0}]  # of an earlier tasks list
    summary = ruler_summary(now + stale, task)
    assert (summary["score"], summary["n"], summary["correct"]) == (1.0, 2, 2)
    entry = {"type": "ruler", **summary, "cells": now + stale}
    assert score_cell(_run({}), "base", entry) == "1.00 [0.34, 1.00] n=2"  # Wilson interval of 2/2
    halves = [{**now[0], "score": 0.5}, now[1]]
    partial = {"type": "ruler", **ruler_summary(halves + stale, task)}
    assert score_cell(_run({}), "base", partial) == "0.75 n=2 (partial matches)"
    older = {"type": "ruler", "score": 0.5, "cells": now + stale}  # recorded before the counts were kept
    assert score_cell(_run({}), "base", older) == "0.50 (n unknown)"


def test_the_retention_table_rates_every_task_the_verdict_rates(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path, "run", short_final=0.5, verdict=SPEC)
    final = run_dir / "eval" / "stage-1-yarn-1024" / "short-context.json"
    data = json.loads(final.read_text())
    data["tasks"]["added"] = {"type": "lm_eval", "score": 0.5, "metrics": {"t": {"acc,none": 0.5}}, "n": {"t": 10}}
    final.write_text(json.dumps(data))  # a task the model before extension was not evaluated on
    run = load_run(run_dir)
    verdict = compute_verdict(run)
    rows = _table(retention_section(run)).rows
    assert [(row[0], row[3], row[4]) for row in rows] == [
        ("short-context / passkey_short", "+0.00 [-0.14, +0.14]", "1.00 [0.84, 1.18]"),  # 36 of 40 documents at both
        ("short-context / niah_short", "-0.45 [-0.52, -0.37]", "0.53 [0.45, 0.60]"),  # 100 of 200 prompts / 190 of 200
        ("short-context / added", "-", "-")]  # no score before extension: no ratio
    assert list(verdict.retention) == [row[0].replace(" / ", "/") for row in rows]
    niah_short = verdict.retention["short-context/niah_short"]
    assert niah_short is not None and niah_short.value == pytest.approx(0.5 / 0.95)
    assert niah_short.interval == ratio_interval(Rate.of(100, 200), Rate.of(190, 200))
    assert verdict.retention["short-context/added"] is None
