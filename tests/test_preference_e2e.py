"""End to end on CPU: the small arena recipe trains on the shipped example through the CLI, its held-out log loss
beats the class prior's, and one ``predict`` of the held-out file with its first rows appended A/B-swapped (under
their own ids) writes a valid submission whose held-out rows score what the evaluation scored and whose swapped rows
are the swapped rows' predictions. Minutes on 2 cores: marked slow."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.real_model import needs_small_model
from toolkit.cli import main
from toolkit.data.arena import read_arena, write_arena
from toolkit.evals.preference_stats import CLASSES, preference_scores

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "data" / "arena-example" / "test.csv"
SWAP_TOLERANCE = 1e-4
"""Both orders are averaged, so swapping A and B only changes which batch each prompt is padded in."""
SWAPPED_ROWS = 24
"""The rows appended again with A and B swapped: the check is per row, and all 120 would take a minute more."""


def _submission(path: Path) -> dict[str, tuple[float, float, float]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["id", *CLASSES]
        return {row["id"]: (float(row[CLASSES[0]]), float(row[CLASSES[1]]), float(row[CLASSES[2]])) for row in reader}


@pytest.mark.slow
@needs_small_model
def test_arena_recipe_beats_the_prior_and_predicts(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "recipes" / "smollm2-135m-arena.yaml"), f"output.dir={run}"]) == 0
    entry = json.loads((run / "eval" / "stage-0-arena" / "arena-example.json").read_text())["tasks"]["heldout"]
    assert entry["n"] == 120 and entry["inputs"] == 240 and entry["truncated_inputs"] == 0
    assert entry["log_loss"] < entry["prior_log_loss"], entry
    assert entry["log_loss_ci"][1] < entry["prior_log_loss"], entry  # the interval clears the prior
    assert entry["accuracy"] > entry["prior_accuracy"]

    test_rows = read_arena(TEST)[0]
    swapped_rows = [replace(row.swapped(), id=f"{row.id}-swapped") for row in test_rows[:SWAPPED_ROWS]]
    both = write_arena([*test_rows, *swapped_rows], tmp_path / "with-swapped.csv")
    out = tmp_path / "submission.csv"
    assert main(["predict", str(run), "--data", str(both), "--out", str(out), "--batch-size", "16"]) == 0
    printed = capsys.readouterr()
    rows, inputs = len(test_rows) + SWAPPED_ROWS, 2 * (len(test_rows) + SWAPPED_ROWS)
    assert f"{rows} rows; 0 of {inputs} inputs (both orders) cut" in printed.out
    assert "predict with-swapped.csv: 100%" in printed.err and f"{inputs}/{inputs}" in printed.err  # the progress bar
    predicted = _submission(out)
    assert list(predicted) == [row.id for row in [*test_rows, *swapped_rows]]
    assert all(abs(sum(p) - 1) < 1e-5 and min(p) > 0 for p in predicted.values())
    submission = {row.id: predicted[row.id] for row in test_rows}
    labels = [row.winner for row in test_rows if row.winner is not None]
    assert len(labels) == len(test_rows)
    scored = preference_scores(list(submission.values()), labels)  # as the suite scored it
    assert scored.log_loss == pytest.approx(entry["log_loss"], abs=SWAP_TOLERANCE)
    assert scored.accuracy == pytest.approx(entry["accuracy"])
    for row in test_rows[:SWAPPED_ROWS]:  # the swapped comparison's submission row is the row's, A and B exchanged
        a, b, tie = predicted[f"{row.id}-swapped"]
        assert submission[row.id] == pytest.approx((b, a, tie), abs=SWAP_TOLERANCE)

    kept = out.read_bytes()
    assert main(["predict", str(run), "--data", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert main(["predict", str(tmp_path), "--data", str(TEST), "--out", str(out)]) == 2
    assert main(["predict", str(run), "--data", str(TEST), "--out", str(out), "--max-tokens", "5"]) == 2
    assert out.read_bytes() == kept
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors[:2] == [f"error: --data: no such file: {tmp_path / 'missing.csv'}",
                          f"error: {tmp_path}: not a run folder (it holds files, but no recipe.resolved.yaml, "
                          "run_info.json or eval/)"]
    assert errors[2].startswith(f"error: --max-tokens: 5 leaves no room for the comparison in {TEST}:")
    assert len(errors) == 3
