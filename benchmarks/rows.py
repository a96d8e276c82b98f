"""The rows the throughput benchmark trains on, as a user's would be: ``one-document`` rows (one document filling
each row, as ``packing: split`` gives long documents) or ``mixture`` rows (documents of heavy-tailed lengths, as in
real corpora, packed by the toolkit's own packing, each row ending in its padding tail). Every row is drawn from
the configuration alone (seeded), so both variants train the same documents: the toolkit packed, the baseline one
document at a time."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

ROWS = ("one-document", "mixture")
MIN_DOCUMENT = 32
MEDIAN_FRACTION = 1 / 16
"""A mixture's median document is 1/16 of the row; lengths are log-normal with sigma :data:`SIGMA` (heavy tail),
clipped to ``MIN_DOCUMENT`` .. the row length."""
SIGMA = 1.5


@dataclass(frozen=True)
class StepRow:
    """One optimizer step's row (batch size 1): the packed row as the data path builds it, and its documents."""

    row: dict[str, list[int]]
    documents: list[tuple[int, int]]
    """``(start, length)`` of every document in the row (padding excluded)."""

    @property
    def lengths(self) -> list[int]:
        return [length for _, length in self.documents]


def _lengths(kind: str, seq_len: int, rng: random.Random) -> Iterator[int]:
    while True:
        if kind == "one-document":
            yield seq_len
        else:
            drawn = rng.lognormvariate(math.log(seq_len * MEDIAN_FRACTION), SIGMA)
            yield max(MIN_DOCUMENT, min(seq_len, int(drawn)))


def step_rows(kind: str, seq_len: int, vocab: int, count: int, pad_id: int, seed: int = 0) -> list[StepRow]:
    """``count`` rows of ``kind`` (:data:`ROWS`), tokens drawn from 3 .. ``vocab`` - 1, loss on every token, padded
    with ``pad_id`` (the tokenizer's, as the data path pads)."""
    from toolkit.data.packing import PAD_SOURCE, Document, pack_rows

    if kind not in ROWS:
        raise ValueError(f"rows: {kind!r} is not one of {', '.join(ROWS)}")
    rng = random.Random(seed)

    def documents() -> Iterator[Document]:
        for length in _lengths(kind, seq_len, rng):
            ids = [rng.randrange(3, vocab) for _ in range(length)]
            yield Document(ids, list(ids))

    result = []
    for row in islice(pack_rows(documents(), seq_len, "pack", pad_id), count):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0 and row["sources"][i] != PAD_SOURCE]
        real = sum(source != PAD_SOURCE for source in row["sources"])
        ends = [*starts[1:], real]
        result.append(StepRow(row, [(s, e - s) for s, e in zip(starts, ends, strict=True)]))
    return result
