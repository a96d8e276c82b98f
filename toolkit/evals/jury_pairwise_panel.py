"""The panel of a ``jury_pairwise`` task (:mod:`toolkit.evals.jury_pairwise`): the judges' prompt, their A/B/tie
votes on Chatbot Arena rows, and the votes pooled into probabilities.

Every judge sees the conversation (each user turn with both assistants' answers to it) and answers ``A``, ``B`` or
``tie``. With ``swap`` every row is also shown with the answers exchanged, and that vote is exchanged back. Pooling
(:func:`pool`): the valid votes of a row (every judge, both orders) as class shares, smoothed toward uniform:
``p_c = (votes_c + s) / (votes + 3 s)``. Vote shares work with any backend (chat APIs and servers that give no
logprobs, local models) and weigh every judge alike, as PoLL does; the smoothing ``s`` keeps a unanimous wrong
panel from the competition's log loss of 34.5 (probability 1e-15) and bounds it at ``ln((votes + 3 s) / s)``; a
row no judge answered gets 1/3 each. A failed or unparseable vote is counted as such and left out of the pooling.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

from toolkit.data.arena import TIE, WINNER_COLUMNS, ArenaRow
from toolkit.evals.judge_protocol import Judge
from toolkit.evals.jury_panel import Cell, raw_line, vote
from toolkit.evals.preference_stats import unswapped
from toolkit.recipe.data_spec import ARENA_LABELS

CLASS_IDS = tuple(range(len(WINNER_COLUMNS)))
"""A preferred, B preferred, tie (the order of the label columns)."""
EXCHANGED = tuple(int(c) for c in unswapped(CLASS_IDS))
"""A vote on the swapped row as a vote on the row: B for A, A for B, tie for tie."""
VERDICTS = ARENA_LABELS
"""The replies the prompt asks for, in class order (what a local judge with ``choose`` picks from)."""
ORDERS = ("original", "swapped")
PAIRWISE_PROMPT = (
    "You will be given a conversation in which two AI assistants, A and B, answered the same user messages. Decide "
    "whose answers the user would prefer: helpful, correct, honest and following the instructions. Do not let the "
    "order of the answers or their length sway you. If they are equally good or equally bad, it is a tie. Reply "
    "with exactly one word: \"A\", \"B\" or \"tie\".\n\n{conversation}")
TURN = "=== Turn {number} ===\n[User]\n{prompt}\n\n[Assistant A]\n{a}\n\n[Assistant B]\n{b}"
_PREFERENCE = re.compile(r"(?i:\ba\s+tie\b|\btie\b)|\b([AB])\b")
"""A or B as a word of its own (upper case), or "tie" in any case ("a tie" is a tie, not a vote for A)."""


def pairwise_prompt(row: ArenaRow) -> str:
    """What every judge is asked about ``row``: each user turn followed by both assistants' answers."""
    turns = [TURN.format(number=i, prompt=prompt, a=a, b=b)
             for i, (prompt, a, b) in enumerate(zip(row.prompt, row.response_a, row.response_b, strict=True), 1)]
    return PAIRWISE_PROMPT.format(conversation="\n\n".join(turns))


def parse_preference(text: str) -> int | None:
    """The first verdict in a judge's text: A -> 0, B -> 1, tie -> 2; ``None`` when there is none."""
    match = _PREFERENCE.search(text)
    if match is None:
        return None
    return TIE if match.group(1) is None else VERDICTS.index(match.group(1))


def row_key(row: ArenaRow) -> str:
    """What identifies a row's recorded cell: a digest of its content (an edited row is judged again)."""
    content = astuple(row)[:-1]  # all but ``where``: moving a row in its file does not make it new
    return hashlib.sha1(json.dumps(content).encode()).hexdigest()[:12]


def judge_rows(judges: list[Judge], rows: Sequence[ArenaRow], swap: bool, raw_path: Path) -> list[Cell]:
    """One cell per row: the human label and every judge's vote in each order (``swapped``: as answered, A and B
    exchanged); every reply also goes to the raw-outputs JSONL."""
    orders = ORDERS if swap else ORDERS[:1]
    shown = {"original": list(rows), "swapped": [row.swapped() for row in rows]}
    cells: list[Cell] = [{"key": row_key(row), "id": row.id, "human": row.winner, "votes": {}} for row in rows]
    with raw_path.open("a", encoding="utf-8") as raw:
        for order in orders:
            prompts = [pairwise_prompt(row) for row in shown[order]]
            replies = {judge.spec.name: judge.ask(prompts, VERDICTS) for judge in judges}
            for i, cell in enumerate(cells):
                cell["votes"][order] = {name: vote(answered[i], parse_preference) for name, answered in replies.items()}
                for name, answered in replies.items():
                    raw.write(raw_line(name, answered[i], cell["votes"][order][name], row=cell["id"], order=order))
    return cells


def verdicts(cell: Cell, names: Sequence[str], order: str, back: bool = True) -> list[int]:
    """The valid votes of ``names`` in one order; a swapped order's exchanged back to the row's A and B (``back``)."""
    found = [cell["votes"][order][name]["verdict"] for name in names if name in cell["votes"].get(order, {})]
    valid = [v for v in found if v is not None]
    return [EXCHANGED[v] for v in valid] if back and order == "swapped" else valid


def pool(votes: Sequence[int], smoothing: float) -> tuple[float, float, float]:
    """Smoothed vote shares: ``(count_c + smoothing) / (len(votes) + 3 smoothing)`` for A, B, tie."""
    total = len(votes) + len(CLASS_IDS) * smoothing
    a, b, tie = ((sum(v == c for v in votes) + smoothing) / total for c in CLASS_IDS)
    return a, b, tie


def cell_votes(cell: Cell, names: Sequence[str]) -> list[int]:
    """Every valid vote of ``names`` on a row, both orders, in the row's A and B."""
    return [v for order in ORDERS if order in cell["votes"] for v in verdicts(cell, names, order)]


def complete_votes(cells: Sequence[Cell], names: Sequence[str]) -> list[list[int]]:
    """Per (row, order) that every judge answered validly: their votes (for Fleiss' kappa among the judges)."""
    return [votes for cell in cells for order in ORDERS if order in cell["votes"]
            if len(votes := verdicts(cell, names, order)) == len(names)]


def usage_votes(cells: Sequence[Cell], name: str) -> list[dict[str, Any]]:
    """Every recorded vote of judge ``name`` (both orders), for its calls, tokens and cost."""
    return [cell["votes"][order][name] for cell in cells for order in ORDERS if order in cell["votes"]]
