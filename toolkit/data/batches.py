"""A stage's training batches: documents from the stage's source or mixture, packed to ``seq_len``, batched by a torch
``DataLoader``, with the tokens each source contributed counted as they are drawn.

The rows form one stream for the whole run (every process reads it), a pure function of (data spec, tokenizer,
seq_len, seed). Which rows a process trains on is decided by whoever prepares the ``DataLoader``: accelerate gives
every data-parallel rank its own share of each global batch (the ranks of one sequence-parallel group the same rows),
and DeepSpeed's Ulysses adapter hands each rank of a group its slice. So one process with batch size ``B * N`` trains
on the rows that ``N`` processes with ``B`` each do. A resumed run continues the stream from the position its
checkpoint saved (:mod:`toolkit.data.stream_state`: no row it consumed is read as tokens again) with the token counts
it had logged; a checkpoint that saved no position (an older one) replays the stream, drawing and dropping the
batches it consumed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypedDict, cast

import torch
from torch.utils.data import DataLoader, IterableDataset

from toolkit.data.mixture import interleave
from toolkit.data.packing import IGNORE_INDEX, PAD_SOURCE, Row, laid_rows
from toolkit.data.sources import check_source, check_token_ids, source_documents
from toolkit.data.stream_state import DocsState, SourceCursor, StreamState
from toolkit.data.tokens import pad_id
from toolkit.errors import RunFailure
from toolkit.recipe.data_spec import TRAIN_DATA, DataSpec
from toolkit.recipe.schema import TrainSpec

SOURCE_SEED_STRIDE = 7919
"""Source ``i`` of a mixture streams with seed ``seed + i * SOURCE_SEED_STRIDE`` (source 0 keeps ``seed``)."""


class _Tokens(TypedDict):
    input_ids: torch.Tensor
    position_ids: torch.Tensor


class Batch(_Tokens, total=False):
    """Packed rows as ``[B, L]`` LongTensors, or a sequence-parallel slice of them. ``position_ids`` restart at every
    document; ``labels`` are unshifted (the HF convention), while slices carry ``shift_labels`` already aligned with
    each position instead; ``sources`` gives each token's source index (``PAD_SOURCE`` for padding) until
    :class:`StageBatches` has counted it. The model gets ids, positions and labels alone
    (``toolkit.training.objective.objective_loss``)."""

    labels: torch.Tensor
    shift_labels: torch.Tensor
    sources: torch.Tensor


def collate(rows: Sequence[Row]) -> Batch:
    """Packed rows (:func:`toolkit.data.packing.pack_rows`) as one batch: the stage loader's ``collate_fn``."""
    def column(key: str) -> torch.Tensor:
        return torch.tensor([row[key] for row in rows], dtype=torch.long)

    return Batch(input_ids=column("input_ids"), position_ids=column("position_ids"), labels=column("labels"),
                 sources=column("sources"))


def as_batch(fields: Mapping[str, Any], device: torch.device | str | None = None) -> Batch:
    """``fields`` (a batch as accelerate or DeepSpeed's Ulysses adapter hands it on, a plain dict) as a
    :class:`Batch`, on ``device`` if given; a key that is no field of a batch is an error."""
    stray = set(fields) - Batch.__required_keys__ - Batch.__optional_keys__
    if stray or not Batch.__required_keys__ <= set(fields):
        raise ValueError(f"a batch holds input_ids, position_ids and some of labels, shift_labels, sources, not "
                         f"{sorted(fields)}")
    return cast(Batch, {key: value if device is None else value.to(device) for key, value in fields.items()})


def target_tokens(batch: Batch) -> torch.Tensor:
    """Tokens with a loss in ``batch``: its ``shift_labels`` (a sequence-parallel slice), else its unshifted labels."""
    if "shift_labels" in batch:
        return (batch["shift_labels"] != IGNORE_INDEX).sum()
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


class PackedRows(IterableDataset):
    """Endless packed rows of ``seq_len`` tokens (:data:`toolkit.data.packing.Row`), from ``start`` (a resumed
    stream's position) or the beginning; ``skipped[i]`` counts the bad records of source ``i`` skipped while reading.
    ``label`` is where the recipe holds ``spec`` (``TrainSpec.data_field``), which errors in the data name.

    It records its position at every row boundary it yields (:meth:`position`), until told to forget it
    (:meth:`forget_before`): what a checkpoint saves is the position at the rows the steps consumed, which is
    behind what this process has read (every process reads every row, and loaders read ahead)."""

    def __init__(self, spec: DataSpec, tokenizer, seq_len: int, seed: int, label: str = TRAIN_DATA,
                 start: StreamState | None = None):
        self.spec, self.tokenizer, self.seq_len, self.seed, self.label = spec, tokenizer, seq_len, seed, label
        sources = spec.sources()
        self.names = [name for name, _, _ in sources]
        self.weights = [weight for _, weight, _ in sources]
        self.start = StreamState.first(len(sources)) if start is None else start
        self._cursors = [SourceCursor.at(state) for state in self.start.docs.sources]
        self._positions: deque[StreamState] = deque()

    @property
    def skipped(self) -> list[int]:
        return [cursor.skipped for cursor in self._cursors]

    def __iter__(self) -> Iterator[Row]:
        start = self.start
        self._cursors = cursors = [SourceCursor.at(state) for state in start.docs.sources]
        drawn = list(start.docs.drawn)
        streams = [source_documents(source, self.tokenizer, self.seq_len, self.seed + i * SOURCE_SEED_STRIDE,
                                    self.spec.source_field(self.label, i), cursors[i])
                   for i, (_, _, source) in enumerate(self.spec.sources())]
        kept = self.seq_len if self.spec.packing == "pad" else None
        docs = streams[0] if len(streams) == 1 else interleave(streams, self.weights, drawn, kept)

        def position() -> DocsState:
            return DocsState(tuple(cursor.snapshot() for cursor in cursors), tuple(drawn))

        index, tokens = start.row, start.tokens
        self._positions = deque([start])
        for row, before, offset in laid_rows(docs, self.seq_len, self.spec.packing, pad_id(self.tokenizer), position,
                                             start.offset):
            index += 1
            tokens = tuple(count + row["sources"].count(i) for i, count in enumerate(tokens))
            self._positions.append(StreamState(index, before, offset, tokens))
            yield row

    def position(self, row: int) -> StreamState:
        """The stream's position before row ``row`` (counted from the stage's first), which it has read past."""
        found = next((state for state in self._positions if state.row == row), None)
        if found is None:
            raise RunFailure(f"the data stream's position at row {row} is not kept (it keeps rows "
                             f"{self._positions[0].row if self._positions else self.start.row} on, as read)")
        return found

    def forget_before(self, row: int) -> None:
        """Drop the positions before row ``row`` (rows consumed for good)."""
        while self._positions and self._positions[0].row < row:
            self._positions.popleft()


class StageBatches(Iterator[Batch]):
    """Endless batches (:class:`Batch` without ``sources``) from a DataLoader over :class:`PackedRows`; ``tokens[i]``
    counts the (non-padding) tokens of source ``i`` in the batches drawn so far by this process."""

    def __init__(self, batches: Iterator[Mapping[str, torch.Tensor]] | DataLoader, rows: PackedRows,
                 sharers: int = 1, *, rows_per_batch: int = 1, per_read: int = 1, consumed: int = 0,
                 vocab_size: int | None = None):
        """``sharers``: processes that draw the same tokens (context-parallel ranks slice rows only later).
        ``rows_per_batch``: rows of the stream one batch drawn by every process consumes (batch size times
        data-parallel groups); ``per_read``: batches handed out per batch read from the loader (the Ulysses adapter
        hands each rank of a group its slice of each of the group's batches). ``consumed``: batches drawn before
        (a resumed stage's, ``step * grad_accum``): those past ``rows.start`` are drawn again here and dropped (all of
        them where a checkpoint saved no position). ``vocab_size``: the model's; a batch with an id at or past it
        stops the run with a :class:`UserError` (only ``format: tokens`` gives ids no tokenizer made)."""
        self._batches = iter(batches)
        self.rows, self.sharers, self.vocab_size = rows, sharers, vocab_size
        self.rows_per_batch, self.per_read = rows_per_batch, per_read
        self.tokens = [0] * len(rows.names)
        self.earlier = list(rows.start.tokens)
        """Tokens of each source in the rows consumed before ``rows.start`` (over all processes)."""
        self.count, behind = divmod(rows.start.row, rows_per_batch)
        if behind or self.count > consumed:
            raise RunFailure(f"the saved data position (row {rows.start.row}) is not at one of the {consumed} batches "
                             f"of {rows_per_batch} rows consumed")
        while self.count < consumed:
            next(self)

    def __next__(self) -> Batch:
        batch = as_batch(next(self._batches))
        sources = batch.pop("sources")
        if self.vocab_size is not None:
            check_token_ids(int(batch["input_ids"].max()), self.vocab_size, self.rows.label)
        drawn = torch.bincount(sources[sources != PAD_SOURCE].flatten().cpu(), minlength=len(self.tokens)).tolist()
        self.tokens = [a + b for a, b in zip(self.tokens, drawn, strict=True)]
        self.count += 1
        self.rows.forget_before(self._resume_row())
        return batch

    def _resume_row(self) -> int:
        """The row a stream resumed after the batches drawn so far starts at: the first of the loader's read."""
        return (self.count - self.count % self.per_read) * self.rows_per_batch

    def position(self) -> StreamState:
        """Where a stream resumed after the batches drawn so far starts (what a checkpoint saves)."""
        return self.rows.position(self._resume_row())

    @property
    def drawn(self) -> int:
        """Non-padding tokens in the batches drawn so far by this process."""
        return sum(self.tokens)

    def logged(self, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, Any]:
        """What ``metrics.jsonl`` records of the data: per source its weight, tokens drawn since the stage began (over
        all processes: ``total`` sums a tensor over them) and bad rows skipped in the stream (every process reads all
        of it)."""
        drawn = (total(torch.tensor(self.tokens, dtype=torch.long)) // self.sharers).tolist()
        drawn = [a + b for a, b in zip(drawn, self.earlier, strict=True)]
        names = self.rows.names
        record: dict[str, Any] = {"source_weights": dict(zip(names, self.rows.weights, strict=True)),
                                  "source_tokens": dict(zip(names, drawn, strict=True))}
        if any(self.rows.skipped):
            record["source_skipped_rows"] = dict(zip(names, self.rows.skipped, strict=True))
        return record


def stage_loader(spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int,
                 start: StreamState | None = None, label: str = TRAIN_DATA) -> DataLoader:
    """The DataLoader of one stage's rows, ``batch_size`` rows per batch, before any process takes its share; from
    ``start`` (a resumed stream's position) or the beginning; ``label``: where the recipe holds ``spec``."""
    return DataLoader(PackedRows(spec, tokenizer, seq_len, seed, label, start), batch_size=batch_size,
                      collate_fn=collate)


def stage_batches(spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int,
                  prepare: Callable[[DataLoader], Any] = lambda loader: loader, sharers: int = 1, *,
                  data_parallel: int = 1, per_read: int = 1, start: StreamState | None = None,
                  consumed: int = 0, vocab_size: int | None = None, label: str = TRAIN_DATA) -> StageBatches:
    """The batches of one stage (see :class:`StageBatches`); ``prepare`` turns the DataLoader into this process's
    (``toolkit.parallel.sequence.prepare_loader`` in a run). ``data_parallel``: groups of processes training on
    different rows; ``start`` and ``consumed``: a resumed stage's saved position and batches drawn before;
    ``vocab_size``: the model's, which every id must be below; ``label``: where the recipe holds ``spec``
    (``TrainSpec.data_field``), which errors in the data name."""
    loader = stage_loader(spec, tokenizer, seq_len, batch_size, seed, start, label)
    rows = loader.dataset
    assert isinstance(rows, PackedRows)
    return StageBatches(prepare(loader), rows, sharers, rows_per_batch=batch_size * data_parallel,
                        per_read=per_read, consumed=consumed, vocab_size=vocab_size)


def check_stage_data(train: TrainSpec, tokenizer, vocab_size: int | None = None) -> None:
    """Every stage's sources checked before the first step (missing files, chat sources without a template, synthetic
    documents that cannot fit the stage, token ids past ``vocab_size``, the model's:
    :func:`toolkit.data.sources.check_source`)."""
    for index, stage in enumerate(train.stages):
        for field, source in train.stage_sources(index):
            check_source(source, tokenizer, stage.seq_len, field, vocab_size)
