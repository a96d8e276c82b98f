"""A preference comparison as the model reads it: the question, every prompt turn with both responses, and the
position where the model answers with one of three label tokens (A preferred, B preferred, tie).

In the chat template (the tokenizer's own or the recipe's) the instruction is the system turn and the comparison
the user turn, answered by the assistant's first token; without a template, the plain layout is
``bos + instruction + "\\n\\n" + comparison + "\\nAnswer:\\n"``. The instruction and the comparison::

    Which response answers the conversation better? Answer A, B or tie.

    ## Prompt 1
    <prompt turn 1>

    ## Response A 1
    <response A to turn 1>

    ## Response B 1
    ...

Every text part (each prompt and response turn) is tokenised on its own. A comparison longer than ``max_tokens``
(answer included) is cut part by part: each part keeps at most an equal share of what the layout leaves (parts
shorter than the share keep everything and their unused share goes to the others), half from its head and half
from its tail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.data.arena import ArenaRow
from toolkit.data.tokens import bos_prefix
from toolkit.errors import UserError

QUESTION = "Which response answers the conversation better? Answer A, B or tie."
"""The instruction: the system turn of the chat layout, the first line of the plain one."""
PLAIN_ANSWER = "\nAnswer:\n"
_MARK = "\x00{}\x00"


@dataclass(frozen=True)
class ArenaInput:
    """The token ids of a comparison up to the answer, and how many tokens of its parts were cut to fit."""

    ids: list[int]
    cut: int


def label_token_ids(tokenizer: Any, labels: Sequence[str], field: str = "label_tokens") -> tuple[int, ...]:
    """The token id of each label; a UserError when one is not exactly one token or two are the same."""
    ids = []
    for label in labels:
        tokens = tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise UserError(f"{field}: {label!r} is {len(tokens)} tokens of the tokenizer, not one; choose labels "
                            "that are one token each")
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        raise UserError(f"{field}: {list(labels)} are not three different tokens")
    return tuple(ids)


def _comparison(row: ArenaRow) -> tuple[str, list[str]]:
    """The comparison with a marker where each part goes, and the parts in order."""
    lines, parts = [], list[str]()
    for turn, texts in enumerate(zip(row.prompt, row.response_a, row.response_b, strict=True), 1):
        for heading, text in zip(("Prompt", "Response A", "Response B"), texts, strict=True):
            lines.append(f"## {heading} {turn}\n{_MARK.format(len(parts))}")
            parts.append(text)
    return "\n\n".join(lines), parts


def _frame(tokenizer: Any, comparison: str, template: str | None) -> tuple[str, list[int]]:
    """The whole input text with markers, and the ids that go before it (bos of the plain layout)."""
    if template is None:
        return f"{QUESTION}\n\n{comparison}{PLAIN_ANSWER}", bos_prefix(tokenizer)
    turns = [{"role": "system", "content": QUESTION}, {"role": "user", "content": comparison}]
    text = tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False, add_generation_prompt=True)
    return str(text), []


def share_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """How many tokens each part keeps so that they sum to at most ``budget``: the largest equal cap, and what
    the parts under it leave spread over the longest parts, one token each."""
    if sum(lengths) <= budget:
        return list(lengths)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    left, cap = budget, 0
    for done, i in enumerate(order):
        cap = left // (len(lengths) - done)
        if lengths[i] > cap:
            break
        left -= lengths[i]
    kept = [min(length, cap) for length in lengths]
    spare = budget - sum(kept)
    for i in sorted((i for i in range(len(lengths)) if lengths[i] > cap), key=lambda i: -lengths[i])[:spare]:
        kept[i] += 1
    return kept


def _head_and_tail(ids: list[int], keep: int) -> list[int]:
    head = keep - keep // 2
    return ids[:head] + (ids[len(ids) - keep // 2:] if keep // 2 else [])


class NoRoom(UserError):
    """A comparison whose layout alone (the fixed text around its turns) leaves no room within ``max_tokens``."""

    def __init__(self, max_tokens: int, layout: int, where: str, field: str = "truncate_tokens"):
        super().__init__(f"{field}: {max_tokens} leaves no room for the comparison in {where} (the layout alone takes "
                         f"{layout} tokens)")
        self.max_tokens, self.layout, self.where = max_tokens, layout, where


def _layout(row: ArenaRow, tokenizer: Any, template: str | None) -> tuple[list[int], list[list[int]], list[str]]:
    """The ids before the text, the ids of the fixed text around the parts, and the parts' texts in order."""
    comparison, parts = _comparison(row)
    text, prefix = _frame(tokenizer, comparison, template)
    pieces = text.split("\x00")  # fixed text, part index, fixed text, part index, ...
    fixed = [list(tokenizer(piece, add_special_tokens=False)["input_ids"]) for piece in pieces[0::2]]
    return prefix, fixed, [parts[int(k)] for k in pieces[1::2]]


def _room(max_tokens: int, prefix: list[int], fixed: list[list[int]], parts: int, where: str, field: str) -> int:
    """The tokens ``max_tokens`` leaves the parts besides the layout and the answer; NoRoom if not one each."""
    layout = len(prefix) + sum(len(ids) for ids in fixed)
    if max_tokens - 1 - layout < parts:
        raise NoRoom(max_tokens, layout, where, field)
    return max_tokens - 1 - layout


def check_room(rows: Sequence[ArenaRow], tokenizer: Any, template: str | None, max_tokens: int,
               field: str = "truncate_tokens") -> None:
    """Before a model needs them: every comparison of ``rows`` leaves its parts room within ``max_tokens`` (the
    layout, counted once per number of turns, is all that can take it; the parts are cut to fit)."""
    layouts: dict[int, tuple[list[int], list[list[int]], list[str]]] = {}
    for row in rows:
        if (turns := len(row.prompt)) not in layouts:
            layouts[turns] = _layout(row, tokenizer, template)
        prefix, fixed, parts = layouts[turns]
        _room(max_tokens, prefix, fixed, len(parts), row.where, field)


def arena_input(row: ArenaRow, tokenizer: Any, template: str | None, max_tokens: int) -> ArenaInput:
    """``row`` laid out up to the answer position, cut to leave room for the answer token in ``max_tokens``."""
    prefix, fixed, parts = _layout(row, tokenizer, template)
    part_ids = [list(tokenizer(part, add_special_tokens=False)["input_ids"]) for part in parts]
    budget = _room(max_tokens, prefix, fixed, len(parts), row.where, "truncate_tokens")
    kept = share_budget([len(ids) for ids in part_ids], budget)
    ids = prefix + fixed[0]
    for part, keep, after in zip(part_ids, kept, fixed[1:], strict=True):
        ids += _head_and_tail(part, keep) + after
    return ArenaInput(ids, sum(len(part) for part in part_ids) - sum(kept))


def swaps(row: ArenaRow, swap: str) -> bool:
    """Whether ``swap`` (none, all, half) exchanges A and B in ``row``; ``half`` picks rows by a digest of the id."""
    if swap == "half":
        return hashlib.sha256(row.id.encode()).digest()[0] % 2 == 1
    return swap == "all"
