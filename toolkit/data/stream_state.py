"""Where a stage's row stream stands, saved in every checkpoint so a resumed run continues the stream from there.

A position is a few ints and RNG states, never tokens: per source its epoch, the records read in it (a resumed
stream reads and drops them without tokenizing them) and its RNG (a text source's upsampling draws, a synthetic
source's generator) and bad records skipped; the mixture's token counts; and the packer's carry-over as the document
the next row begins in (drawn again from the position before it) with the tokens of it that earlier rows hold. So a
resume tokenizes at most that one document again, never what the run consumed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

RngState = tuple[Any, ...]
"""``random.Random.getstate()``: ``(version, 625 ints, gauss_next)``."""


@dataclass(frozen=True)
class SourceState:
    """One source's position: before its next document."""

    epoch: int = 0
    records: int = 0
    """Records of ``epoch`` read so far (text sources)."""
    rng: RngState | None = None
    """The source's RNG, None before it first drew (a fresh stream seeds it)."""
    produced: bool = False
    """Whether the source has yielded a document (an epoch without any is an error)."""
    skipped: int = 0
    """Bad records skipped so far (``bad_rows: skip``)."""


@dataclass
class SourceCursor:
    """A source's live position, kept up to date by its document stream; :meth:`snapshot` freezes it."""

    epoch: int = 0
    records: int = 0
    rng: random.Random | None = None
    produced: bool = False
    skipped: int = 0

    @classmethod
    def at(cls, state: SourceState) -> SourceCursor:
        rng = None
        if state.rng is not None:
            rng = random.Random()
            rng.setstate(state.rng)
        return cls(state.epoch, state.records, rng, state.produced, state.skipped)

    def snapshot(self) -> SourceState:
        rng = None if self.rng is None else self.rng.getstate()
        return SourceState(self.epoch, self.records, rng, self.produced, self.skipped)


@dataclass(frozen=True)
class DocsState:
    """The position of a stage's document stream: each source's, and the tokens the mixture drew from each."""

    sources: tuple[SourceState, ...]
    drawn: tuple[int, ...]


@dataclass(frozen=True)
class StreamState:
    """The row stream before row ``row``: its documents at ``docs``, the next row beginning ``offset`` tokens into
    the next document drawn from there, and ``tokens[i]`` the non-padding tokens of source ``i`` in earlier rows."""

    row: int
    docs: DocsState
    offset: int = 0
    tokens: tuple[int, ...] = field(default=())

    @classmethod
    def first(cls, sources: int) -> StreamState:
        """The start of a stream of ``sources`` sources."""
        return cls(0, DocsState((SourceState(),) * sources, (0,) * sources), 0, (0,) * sources)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamState:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples)."""
        docs = data["docs"]
        sources = tuple(SourceState(**{**s, "rng": _rng(s["rng"])}) for s in docs["sources"])
        return cls(data["row"], DocsState(sources, tuple(docs["drawn"])), data["offset"], tuple(data["tokens"]))


def _rng(state: list[Any] | None) -> RngState | None:
    if state is None:
        return None
    version, internal, gauss = state
    return version, tuple(internal), gauss
