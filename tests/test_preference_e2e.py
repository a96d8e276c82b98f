"""End to end on CPU: the small arena recipe trains on the shipped example through the CLI, its held-out log loss
beats the class prior's, ``predict`` writes a valid submission that scores what the evaluation scored, and the
submission for the A/B-swapped file is the swapped submission, on the first rows. 145 s in CI on 2 idle cores
(2026-12-05; 15 minutes on the same cores shared with other jobs): marked slow."""

from __future__ import annotations

import csv
import json
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
"""The rows predicted again with A and B swapped: the check is per row, and all 120 would take a minute more."""


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

    out = tmp_path / "submission.csv"
    assert main(["predict", str(run), "--data", str(TEST), "--out", str(out), "--batch-size", "16"]) == 0
    printed = capsys.readouterr()
    assert "120 rows; 0 of 240 inputs (both orders) cut" in printed.out
    assert "predict test.csv: 100%" in printed.err and "240/240" in printed.err  # the progress bar
    submission = _submission(out)
    test_rows = read_arena(TEST)[0]
    assert list(submission) == [row.id for row in test_rows]
    assert all(abs(sum(p) - 1) < 1e-5 and min(p) > 0 for p in submission.values())
    labels = [row.winner for row in test_rows if row.winner is not None]
    assert len(labels) == len(test_rows)
    scored = preference_scores(list(submission.values()), labels)  # as the suite scored it
    assert scored.log_loss == pytest.approx(entry["log_loss"], abs=SWAP_TOLERANCE)
    assert scored.accuracy == pytest.approx(entry["accuracy"])

    rows = read_arena(TEST)[0][:SWAPPED_ROWS]
    swapped_file = write_arena([row.swapped() for row in rows], tmp_path / "swapped.csv")
    swapped_out = tmp_path / "swapped-submission.csv"
    assert main(["predict", str(run), "--data", str(swapped_file), "--out", str(swapped_out),
                 "--batch-size", "16"]) == 0
    swapped = _submission(swapped_out)
    assert list(swapped) == [row.id for row in rows]
    for id_, (a, b, tie) in swapped.items():
        assert submission[id_] == pytest.approx((b, a, tie), abs=SWAP_TOLERANCE)

    assert main(["predict", str(run), "--data", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert main(["predict", str(tmp_path), "--data", str(TEST), "--out", str(out)]) == 2
    kept = out.read_bytes()
    assert main(["predict", str(run), "--data", str(TEST), "--out", str(out), "--max-tokens", "5"]) == 2
    assert out.read_bytes() == kept
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors[:2] == [f"error: --data: no such file: {tmp_path / 'missing.csv'}",
                          f"error: {tmp_path / 'final'}: not found; the run has no final model yet (train it to the "
                          "end first)"]
    assert errors[2].startswith(f"error: --max-tokens: 5 leaves no room for the comparison in {TEST}:")
    assert len(errors) == 3
