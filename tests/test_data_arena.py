"""Reading Chatbot Arena preference files: rows, winners, test files, and bad rows named by file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from toolkit.data.arena import ArenaRow, read_arena, read_labelled_arena
from toolkit.errors import UserError

HEADER = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", "winner_model_a", "winner_model_b",
          "winner_tie"]


def _write(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _row(id: str, winner: tuple[int, int, int] = (1, 0, 0), prompt: object = None) -> list[object]:
    prompt = json.dumps(["What is 2+2?", "And 3+3?"]) if prompt is None else prompt
    return [id, "m1", "m2", prompt, json.dumps(["4", "6"]), json.dumps(["5\nsurely", None]), *winner]


def test_reads_rows_turns_and_winners(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.csv", [_row("1"), _row("2", (0, 1, 0)), _row("3", (0, 0, 1))])
    rows, skipped = read_arena(path)
    assert skipped == 0
    assert [row.winner for row in rows] == [0, 1, 2]
    first = rows[0]
    assert first.prompt == ("What is 2+2?", "And 3+3?")
    assert first.response_b == ("5\nsurely", "")  # a null turn is ""
    assert (first.id, first.model_a, first.where) == ("1", "m1", f"{path}:2")
    assert rows[1].where == f"{path}:3"  # the multi-line field above does not shift line numbers (quoted)


def test_swapped_exchanges_answers_and_winner() -> None:
    row = ArenaRow("7", "m1", "m2", ("q",), ("a",), ("b",), 0, "f:2")
    swapped = row.swapped()
    assert (swapped.model_a, swapped.response_a, swapped.response_b, swapped.winner) == ("m2", ("b",), ("a",), 1)
    assert swapped.swapped() == row
    assert ArenaRow("8", "m1", "m2", ("q",), ("a",), ("b",), 2, "f:3").swapped().winner == 2


def test_test_file_has_no_winner(tmp_path: Path) -> None:
    path = _write(tmp_path / "test.csv", [_row("1")[:6]], HEADER[:6])
    rows, _ = read_arena(path)
    assert rows[0].winner is None
    with pytest.raises(UserError) as error:
        read_labelled_arena(path, label="task.data", needed_by="scored against human labels")
    assert str(error.value) == f"task.data: {path} has no winner columns (scored against human labels)"


def test_a_labelled_file_gives_its_rows_winners(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.csv", [_row("1"), _row("2", (0, 0, 1)), _row("3", (1, 0, 0))])
    rows, winners, skipped = read_labelled_arena(path)
    assert winners == [row.winner for row in read_arena(path)[0]] == [0, 2, 0] and len(rows) == 3 and skipped == 0


@pytest.mark.parametrize(("row", "message"), [
    (_row("2", prompt="[not json"), "data: unparseable JSON in 'prompt' in {path}:3"),
    (_row("2", (0, 0, 0)), "data: no winner in {path}:3"),
    (_row("2", (1, 1, 0)), "data: two winners (winner_model_a and winner_model_b) in {path}:3"),
    (_row("2", prompt=json.dumps(["only one"])),
     "data: mismatched turn counts (prompt 1, response_a 2, response_b 2) in {path}:3"),
    (_row(" "), "data: no id in {path}:3"),  # a submission row names its comparison by it
])
def test_bad_rows_error_or_skip(tmp_path: Path, row: list[object], message: str) -> None:
    path = _write(tmp_path / "bad.csv", [_row("1"), row, _row("3")])
    with pytest.raises(UserError) as error:
        read_arena(path)
    assert str(error.value) == message.format(path=path)
    rows, skipped = read_arena(path, bad_rows="skip")
    assert ([r.id for r in rows], skipped) == (["1", "3"], 1)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^test: no such file: .*missing.csv$"):
        read_arena(tmp_path / "missing.csv", label="test")
    partial = _write(tmp_path / "partial.csv", [_row("1")[:7]], HEADER[:7])
    with pytest.raises(UserError, match="has winner_model_a but no winner_model_b, winner_tie"):
        read_arena(partial)
    no_prompt = _write(tmp_path / "no_prompt.csv", [["1"]], ["id"])
    with pytest.raises(UserError, match="has no column 'prompt'"):
        read_arena(no_prompt)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"id": "1", "prompt": "[\\"hi\\"]"}\n')  # read as CSV: a header and no rows
    with pytest.raises(UserError, match=r"^--data: .*rows.jsonl is not a CSV or Parquet file \(its name ends .csv, "
                                        r".csv.gz, .parquet\)$"):
        read_arena(jsonl, label="--data")


def test_the_competitions_test_file_names_no_models_and_no_winners(tmp_path: Path) -> None:
    columns = ["id", "prompt", "response_a", "response_b"]  # the columns of the competition's test.csv
    full = dict(zip(HEADER, _row("9"), strict=True))
    [row], skipped = read_arena(_write(tmp_path / "test.csv", [[full[c] for c in columns]], columns))
    assert (row.id, row.model_a, row.model_b, row.winner, skipped) == ("9", "", "", None, 0)
    assert row.prompt == ("What is 2+2?", "And 3+3?") and row.response_a == ("4", "6")


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([dict(zip(HEADER, _row("1", (0, 0, 1)), strict=True))]), path)
    rows, _ = read_arena(path)
    assert (rows[0].winner, rows[0].where, rows[0].response_a) == (2, f"{path} row 1", ("4", "6"))
