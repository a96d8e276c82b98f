"""Lay tokenised documents into rows of exactly ``seq_len`` tokens.

Rows carry ``position_ids`` that restart at 0 at every document (the ``DataCollatorWithFlattening``
convention). With ``attention_mask=None`` and ``use_cache=False``, transformers turns those restarts into a
block-diagonal causal mask, so packed documents do not attend to each other (``tests/test_packing_isolation.py``).
The first label of every document and piece is ignored, so no token learns to predict across a boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal, TypeVar

IGNORE_INDEX = -100
"""Label of positions that take no part in the loss (PyTorch's and transformers' convention)."""

PAD_SOURCE = -1
"""Source index of padding tokens in a row's ``sources``."""

Row = dict[str, list[int]]

P = TypeVar("P")
"""A position in a document stream (:func:`laid_rows`)."""


@dataclass
class Document:
    """One tokenised document. ``labels[t]`` is the target for ``input_ids[t]`` (unshifted, as in
    transformers; the loss shifts) and is ``IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    source: int = 0
    """Index of the source it came from in its stage's mixture (0 for a single source)."""

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} input ids but {len(self.labels)} labels")


def _pieces(doc: Document, seq_len: int, offset: int = 0) -> Iterator[tuple[int, Document]]:
    """``doc`` from token ``offset`` on, cut into pieces of at most ``seq_len`` tokens, each with its first label
    ignored, with the token each starts at."""
    for start in range(offset, len(doc.input_ids), seq_len):
        labels = doc.labels[start:start + seq_len]
        yield start, Document(doc.input_ids[start:start + seq_len], [IGNORE_INDEX] + labels[1:], doc.source)


def _row(parts: list[Document], seq_len: int, pad_id: int) -> Row:
    """Concatenate ``parts`` and fill the rest with padding, itself a separate (ignored) document. ``sources``
    gives each token's source (``PAD_SOURCE`` for padding)."""
    row: Row = {"input_ids": [], "labels": [], "position_ids": [], "sources": []}
    for part in parts:
        row["input_ids"] += part.input_ids
        row["labels"] += part.labels
        row["position_ids"] += range(len(part.input_ids))
        row["sources"] += [part.source] * len(part.input_ids)
    missing = seq_len - len(row["input_ids"])
    row["input_ids"] += [pad_id] * missing
    row["labels"] += [IGNORE_INDEX] * missing
    row["position_ids"] += range(missing)
    row["sources"] += [PAD_SOURCE] * missing
    return row


def laid_rows(docs: Iterator[Document], seq_len: int, mode: Literal["pack", "split", "pad"], pad_id: int,
              position: Callable[[], P], offset: int = 0) -> Iterator[tuple[Row, P, int]]:
    """The rows of :func:`pack_rows`, each with where the next row begins: the position of ``docs`` (``position()``)
    before the document it begins in, and the tokens of that document earlier rows hold. ``offset``: tokens of the
    first document to leave out (a stream resumed from such a pair)."""
    parts: list[Document] = []
    used = 0
    while True:
        before = position()
        doc = next(docs, None)
        if doc is None:
            break
        cut = _pieces(doc, seq_len, offset)
        offset = 0
        for start, piece in cut if mode != "pad" else islice(cut, 1):
            if mode != "pack":
                end = start + seq_len
                more = mode == "split" and end < len(doc.input_ids)
                yield (_row([piece], seq_len, pad_id), *((before, end) if more else (position(), 0)))
                continue
            if used + len(piece.input_ids) > seq_len:
                yield _row(parts, seq_len, pad_id), before, start
                parts, used = [], 0
            parts.append(piece)
            used += len(piece.input_ids)
    if parts:
        yield _row(parts, seq_len, pad_id), position(), 0


def pack_rows(docs: Iterable[Document], seq_len: int, mode: Literal["pack", "split", "pad"],
              pad_id: int) -> Iterator[Row]:
    """Rows of ``input_ids``, ``labels``, ``position_ids`` and ``sources`` (plain lists of ``seq_len`` ints).

    ``pack``: whole documents side by side; one that no longer fits opens the next row, one longer than
    ``seq_len`` is cut into ``seq_len`` pieces first. ``split``: one document per row, cut into pieces, the
    last one padded. ``pad``: one document per row, truncated to ``seq_len`` or padded.
    """
    for row, _, _ in laid_rows(iter(docs), seq_len, mode, pad_id, lambda: None):
        yield row
