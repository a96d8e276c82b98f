"""A small Chatbot Arena CSV for the pairwise jury's tests (imported, no tests here): nine test rows (four A,
three B, two ties; one of two turns, one with an empty turn) and ten training rows (five A, three B, two ties),
written by :func:`toolkit.data.arena.write_arena`."""

from __future__ import annotations

from toolkit.data.arena import ArenaRow


def _row(row_id: str, prompt: list[str], a: list[str], b: list[str], winner: int) -> ArenaRow:
    """Winner: 0 = A, 1 = B, 2 = tie."""
    return ArenaRow(row_id, "model-x", "model-y", tuple(prompt), tuple(a), tuple(b), winner, "")


TEST_ROWS: list[ArenaRow] = [
    _row("t1", ["What is 7 * 8?"], ["7 * 8 = 56."], ["7 * 8 = 54."], 0),
    _row("t2", ["Name a prime number above 10."], ["13 is prime."], ["I cannot help with that."], 0),
    _row("t3", ["Translate 'cat' into French."], ["chien"], ["chat"], 1),
    _row("t4", ["What is 12 + 30?", "And doubled?"], ["42.", "84."], ["42.", "80."], 0),
    _row("t5", ["Capital of Italy?"], ["Rome."], ["The capital of Italy is Rome."], 2),
    _row("t6", ["Write a haiku about rain."], [""], ["Soft rain on the roof / ..."], 1),
    _row("t7", ["Is 91 prime?"], ["No: 91 = 7 * 13."], ["Yes, 91 is prime."], 0),
    _row("t8", ["What is 9 - 3?"], ["5"], ["6"], 1),
    _row("t9", ["Say hi."], ["Hi!"], ["Hello!"], 2),
]
TRAIN_WINNERS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


def train_rows() -> list[ArenaRow]:
    return [_row(f"r{i}", [f"Question {i}?"], [f"Answer {i}a."], [f"Answer {i}b."], winner)
            for i, winner in enumerate(TRAIN_WINNERS)]


def shown_winners(rows: list[ArenaRow]) -> dict[tuple[tuple[str, ...], tuple[str, ...]], int]:
    """The human label of every row in both orders, keyed by the answers as shown (A's, B's): what the fake
    judge ``oracle`` answers."""
    winners = {}
    for shown in [*rows, *(row.swapped() for row in rows)]:
        assert shown.winner is not None
        winners[(shown.response_a, shown.response_b)] = shown.winner
    return winners
