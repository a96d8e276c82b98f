"""Interleave the document streams of a mixture so each source gives its weight's share of the tokens.

The next document always comes from the source furthest below its share: the one with the least tokens drawn
per unit of weight (ties to the earlier source). Token shares then stay within one document of the weights at
every point of the stream, whatever each source's document lengths, and upsampling inside a source changes
what that source gives, not how much. ``datasets.interleave_datasets`` with probabilities draws records, not
tokens: its token shares would follow each source's mean document length, which a stream does not know in
advance, and would move with every length filter or upsampling. The order is a pure function of the streams,
which are seeded, so a stream resumed with the counts drawn so far draws exactly the same documents.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from toolkit.data.packing import Document


def interleave(streams: Sequence[Iterator[Document]], weights: Sequence[float], drawn: list[int] | None = None,
               kept: int | None = None) -> Iterator[Document]:
    """Documents from ``streams`` (endless), each tagged with its stream's index in ``Document.source``. ``drawn``:
    the tokens drawn so far from each stream (a resumed stream's), updated in place as documents are drawn.
    ``kept``: the most tokens of one document the rows keep (``packing: pad`` keeps one row's worth), counted
    instead of its length."""
    if len(streams) != len(weights) or not streams or min(weights) <= 0:
        raise ValueError("interleave needs one positive weight per stream")
    drawn = [0] * len(streams) if drawn is None else drawn
    while True:
        index = min(range(len(streams)), key=lambda i: drawn[i] / weights[i])
        doc = next(streams[index])
        drawn[index] += len(doc.input_ids) if kept is None else min(len(doc.input_ids), kept)
        yield replace(doc, source=index)
