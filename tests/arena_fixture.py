"""A small Chatbot Arena CSV for the pairwise jury's tests (imported, no tests here): nine test rows (four A,
three B, two ties; one of two turns, one with a null turn) and ten training rows (five A, three B, two ties)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from toolkit.data.arena import WINNER_COLUMNS

Row = tuple[str, list[str], list[str | None], list[str | None], int]
"""(id, prompt turns, response_a turns, response_b turns, winner: 0 = A, 1 = B, 2 = tie)."""

TEST_ROWS: list[Row] = [
    ("t1", ["What is 7 * 8?"], ["7 * 8 = 56."], ["7 * 8 = 54."], 0),
    ("t2", ["Name a prime number above 10."], ["13 is prime."], ["I cannot help with that."], 0),
    ("t3", ["Translate 'cat' into French."], ["chien"], ["chat"], 1),
    ("t4", ["What is 12 + 30?", "And doubled?"], ["42.", "84."], ["42.", "80."], 0),
    ("t5", ["Capital of Italy?"], ["Rome."], ["The capital of Italy is Rome."], 2),
    ("t6", ["Write a haiku about rain."], [None], ["Soft rain on the roof / ..."], 1),
    ("t7", ["Is 91 prime?"], ["No: 91 = 7 * 13."], ["Yes, 91 is prime."], 0),
    ("t8", ["What is 9 - 3?"], ["5"], ["6"], 1),
    ("t9", ["Say hi."], ["Hi!"], ["Hello!"], 2),
]
TRAIN_WINNERS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


def write_arena(path: Path, rows: list[Row], labelled: bool = True) -> Path:
    """``rows`` as a competition CSV, with the winner columns when ``labelled`` (else as a test file)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        labels = list(WINNER_COLUMNS) if labelled else []
        writer.writerow(["id", "model_a", "model_b", "prompt", "response_a", "response_b", *labels])
        for row_id, prompt, a, b, winner in rows:
            flags = [int(winner == k) for k in range(len(labels))]
            writer.writerow([row_id, "model-x", "model-y", json.dumps(prompt), json.dumps(a), json.dumps(b), *flags])
    return path


def train_rows() -> list[Row]:
    return [(f"r{i}", [f"Question {i}?"], [f"Answer {i}a."], [f"Answer {i}b."], winner)
            for i, winner in enumerate(TRAIN_WINNERS)]


def shown_winners(rows: list[Row]) -> dict[tuple[tuple[str, ...], tuple[str, ...]], int]:
    """The human label of every row in both orders, keyed by the answers as shown (A's, B's): what the fake
    judge ``oracle`` answers."""
    winners = {}
    for _, _, a, b, winner in rows:
        first, second = tuple(t or "" for t in a), tuple(t or "" for t in b)
        winners[(first, second)] = winner
        winners[(second, first)] = winner if winner == 2 else 1 - winner
    return winners
