"""Chatbot Arena preference rows: two models' answers to the same conversation and which one a person preferred.

The competition's CSV (or Parquet) columns: ``id, model_a, model_b, prompt, response_a, response_b`` (each of the
last three a JSON list of turns; a null turn is read as ""), then ``winner_model_a, winner_model_b, winner_tie``
(one of them 1), which a test file leaves out. A bad row (JSON that does not parse, no winner or two, turn counts
that differ) stops the read naming its file and line, or is skipped and counted (``bad_rows="skip"``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from toolkit.data.local_files import FORMATS
from toolkit.errors import UserError
from toolkit.output_paths import atomic_file

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
WINNER_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
"""The label columns, in class order: 0 = A preferred, 1 = B preferred, 2 = tie."""
COLUMNS = ("id", "model_a", "model_b", *TEXT_COLUMNS)
REQUIRED_COLUMNS = ("id", *TEXT_COLUMNS)
"""What every file holds: the competition's test file names no models."""
TIE = 2


class BadArenaRow(ValueError):
    """A row that is not a valid preference row; the message says what is wrong."""


@dataclass(frozen=True)
class ArenaRow:
    """One comparison: the prompt's turns, each model's answers to them, and the winner (None in a test file)."""

    id: str
    model_a: str
    model_b: str
    prompt: tuple[str, ...]
    response_a: tuple[str, ...]
    response_b: tuple[str, ...]
    winner: int | None
    where: str

    def swapped(self) -> ArenaRow:
        """The same comparison with A and B exchanged (a tie stays a tie)."""
        winner = self.winner if self.winner in (None, TIE) else 1 - self.winner
        return replace(self, model_a=self.model_b, model_b=self.model_a, response_a=self.response_b,
                       response_b=self.response_a, winner=winner)


def _turns(record: Mapping[str, Any], column: str) -> tuple[str, ...]:
    value = record.get(column)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadArenaRow(f"unparseable JSON in {column!r}") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise BadArenaRow(f"{column!r} is not a list of turns")
    if not all(turn is None or isinstance(turn, str) for turn in value):
        raise BadArenaRow(f"{column!r} holds a turn that is not text")
    return tuple(turn or "" for turn in value)


def _flag(record: Mapping[str, Any], column: str) -> bool:
    value = record.get(column)
    try:
        number = float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise BadArenaRow(f"{column!r} is {value!r}, not 0 or 1") from None
    if number not in (0.0, 1.0):
        raise BadArenaRow(f"{column!r} is {value!r}, not 0 or 1")
    return number == 1.0


def _winner(record: Mapping[str, Any]) -> int:
    winners = [i for i, column in enumerate(WINNER_COLUMNS) if _flag(record, column)]
    if not winners:
        raise BadArenaRow("no winner")
    if len(winners) > 1:
        raise BadArenaRow(f"two winners ({' and '.join(WINNER_COLUMNS[i] for i in winners)})")
    return winners[0]


def arena_row(record: Mapping[str, Any], where: str, labelled: bool = True) -> ArenaRow:
    """One record (a CSV or Parquet row, or any mapping with the competition's columns) as an :class:`ArenaRow`;
    ``labelled=False`` for a test file (no winner columns). Raises :class:`BadArenaRow`."""
    prompt, response_a, response_b = (_turns(record, column) for column in TEXT_COLUMNS)
    if not len(prompt) == len(response_a) == len(response_b):
        raise BadArenaRow(f"mismatched turn counts (prompt {len(prompt)}, response_a {len(response_a)}, "
                          f"response_b {len(response_b)})")
    if not prompt:
        raise BadArenaRow("no turns")
    ident = "" if record.get("id") is None else str(record["id"]).strip()
    if not ident:  # a submission names each comparison by it, and swap: half draws by it
        raise BadArenaRow("no id")
    return ArenaRow(ident, str(record.get("model_a") or ""), str(record.get("model_b") or ""),
                    prompt, response_a, response_b, _winner(record) if labelled else None, where)


ARENA_SUFFIXES = (".csv", ".csv.gz", ".parquet")
"""The competition's files: CSV (gzip'd or not) or Parquet."""


def _records(file: Path, label: str) -> Iterator[tuple[dict[str, Any], str]]:
    if file.is_dir():
        raise UserError(f"{label}: {file} is a folder; name a CSV or Parquet file")
    if not file.is_file():
        raise UserError(f"{label}: no such file: {file}")
    if not file.name.endswith(ARENA_SUFFIXES):  # a JSONL file read as CSV has no rows, or no columns it needs
        raise UserError(f"{label}: {file} is not a CSV or Parquet file (its name ends {', '.join(ARENA_SUFFIXES)})")
    reader = FORMATS["parquet" if file.suffix == ".parquet" else "csv"].reader
    for row in reader([str(file)], label):
        yield row["record"], row["where"]


def _labelled(columns: list[str], file: Path, label: str) -> bool:
    """Whether the file has the winner columns (all three, or none in a test file)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise UserError(f"{label}: {file} has no column {missing[0]!r} (columns: {', '.join(columns)})")
    present = [column for column in WINNER_COLUMNS if column in columns]
    if present and len(present) < len(WINNER_COLUMNS):
        absent = sorted(set(WINNER_COLUMNS) - set(present))
        raise UserError(f"{label}: {file} has {', '.join(present)} but no {', '.join(absent)}")
    return bool(present)


def read_arena(path: str | Path, bad_rows: Literal["error", "skip"] = "error",
               label: str = "data") -> tuple[list[ArenaRow], int]:
    """Every row of a competition CSV or Parquet file, and how many bad rows were skipped (``bad_rows="skip"``);
    with ``bad_rows="error"`` a bad row is a UserError ``<label>: <what> in <file:line>``."""
    file = Path(os.path.expanduser(path))
    rows: list[ArenaRow] = []
    skipped = 0
    labelled: bool | None = None
    for record, where in _records(file, label):
        if labelled is None:
            labelled = _labelled(list(record), file, label)
        try:
            rows.append(arena_row(record, where, labelled))
        except BadArenaRow as bad:
            if bad_rows == "error":
                raise UserError(f"{label}: {bad} in {where}") from None
            skipped += 1
    if not rows:
        raise UserError(f"{label}: no rows in {file}" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    return rows, skipped


def read_labelled_arena(path: str | Path, bad_rows: Literal["error", "skip"] = "error", label: str = "data",
                        needed_by: str = "scored against human labels") -> tuple[list[ArenaRow], list[int], int]:
    """:func:`read_arena`'s rows, their winners and the bad rows skipped; a UserError when the file has no winner
    columns (``needed_by`` says what needs them). Winners are all or none in a file."""
    rows, skipped = read_arena(path, bad_rows, label)
    winners = [row.winner for row in rows if row.winner is not None]
    if not winners:
        raise UserError(f"{label}: {path} has no winner columns ({needed_by})")
    return rows, winners, skipped


def write_arena(rows: Sequence[ArenaRow], path: str | Path) -> Path:
    """``rows`` as a competition CSV (winner columns when every row has a winner), written whole or not at all;
    ``read_arena`` reads it back."""
    labelled = all(row.winner is not None for row in rows)
    with atomic_file(Path(path)) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, *(WINNER_COLUMNS if labelled else ())])
        for row in rows:
            texts = [json.dumps(list(turns)) for turns in (row.prompt, row.response_a, row.response_b)]
            flags = [int(k == row.winner) for k in range(len(WINNER_COLUMNS))] if labelled else []
            writer.writerow([row.id, row.model_a, row.model_b, *texts, *flags])
    return Path(path)
