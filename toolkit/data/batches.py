"""A stage's training batches: documents from the stage's source or mixture, packed to ``seq_len``, batched by a torch
``DataLoader``, with the tokens each source contributed counted as they are drawn.

The rows form one stream for the whole run (every process reads it), a pure function of (data spec, tokenizer,
seq_len, seed). Which rows a process trains on is decided by whoever prepares the ``DataLoader``: accelerate gives
every data-parallel rank its own share of each global batch (the ranks of one sequence-parallel group the same rows),
and DeepSpeed's Ulysses adapter hands each rank of a group its slice. So one process with batch size ``B * N`` trains
on the rows that ``N`` processes with ``B`` each do, and a resumed run skips what it consumed by drawing and discarding
batches (so the counts match an uninterrupted run's too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypedDict, cast

import torch
from torch.utils.data import DataLoader, IterableDataset

from toolkit.data.mixture import interleave
from toolkit.data.packing import IGNORE_INDEX, PAD_SOURCE, Row, pack_rows
from toolkit.data.sources import check_source, source_documents
from toolkit.data.tokens import pad_id
from toolkit.recipe.schema import DataSpec, TrainSpec

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


def _label(base: str, spec: DataSpec, index: int) -> str:
    return f"{base}.mixture[{index}]" if spec.mixture is not None else base


class PackedRows(IterableDataset):
    """Endless packed rows of ``seq_len`` tokens (:data:`toolkit.data.packing.Row`); ``skipped[i]`` counts the bad
    records of source ``i`` skipped while reading."""

    def __init__(self, spec: DataSpec, tokenizer, seq_len: int, seed: int, label: str = "train.data"):
        self.spec, self.tokenizer, self.seq_len, self.seed, self.label = spec, tokenizer, seq_len, seed, label
        sources = spec.sources()
        self.names = [name for name, _, _ in sources]
        self.weights = [weight for _, weight, _ in sources]
        self.skipped = [0] * len(sources)

    def __iter__(self) -> Iterator[Row]:
        streams = [source_documents(source, self.tokenizer, self.seq_len, self.seed + i * SOURCE_SEED_STRIDE,
                                    _label(self.label, self.spec, i), self._skip_counter(i))
                   for i, (_, _, source) in enumerate(self.spec.sources())]
        docs = streams[0] if len(streams) == 1 else interleave(streams, self.weights)
        yield from pack_rows(docs, self.seq_len, self.spec.packing, pad_id(self.tokenizer))

    def _skip_counter(self, index: int) -> Callable[[], None]:
        def skip() -> None:
            self.skipped[index] += 1
        return skip


class StageBatches(Iterator[Batch]):
    """Endless batches (:class:`Batch` without ``sources``) from a DataLoader over :class:`PackedRows`; ``tokens[i]``
    counts the (non-padding) tokens of source ``i`` in the batches drawn so far by this process."""

    def __init__(self, batches: Iterator[Mapping[str, torch.Tensor]] | DataLoader, rows: PackedRows,
                 sharers: int = 1):
        """``sharers``: processes that draw the same tokens (context-parallel ranks slice rows only later)."""
        self._batches = iter(batches)
        self.rows, self.sharers = rows, sharers
        self.tokens = [0] * len(rows.names)

    def __next__(self) -> Batch:
        batch = as_batch(next(self._batches))
        sources = batch.pop("sources")
        drawn = torch.bincount(sources[sources != PAD_SOURCE].flatten().cpu(), minlength=len(self.tokens)).tolist()
        self.tokens = [a + b for a, b in zip(self.tokens, drawn, strict=True)]
        return batch

    @property
    def drawn(self) -> int:
        """Non-padding tokens in the batches drawn so far by this process."""
        return sum(self.tokens)

    def logged(self, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, Any]:
        """What ``metrics.jsonl`` records of the data: per source its weight, tokens drawn since the stage began (over
        all processes: ``total`` sums a tensor over them) and bad rows skipped in the stream (every process reads all
        of it)."""
        drawn = (total(torch.tensor(self.tokens, dtype=torch.long)) // self.sharers).tolist()
        names = self.rows.names
        record: dict[str, Any] = {"source_weights": dict(zip(names, self.rows.weights, strict=True)),
                                  "source_tokens": dict(zip(names, drawn, strict=True))}
        if any(self.rows.skipped):
            record["source_skipped_rows"] = dict(zip(names, self.rows.skipped, strict=True))
        return record


def stage_loader(spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int) -> DataLoader:
    """The DataLoader of one stage's rows, ``batch_size`` rows per batch, before any process takes its share."""
    return DataLoader(PackedRows(spec, tokenizer, seq_len, seed), batch_size=batch_size, collate_fn=collate)


def stage_batches(spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int,
                  prepare: Callable[[DataLoader], Any] = lambda loader: loader, sharers: int = 1) -> StageBatches:
    """The batches of one stage (see :class:`StageBatches`); ``prepare`` turns the DataLoader into this process's
    (``toolkit.parallel.sequence.prepare_loader`` in a run)."""
    loader = stage_loader(spec, tokenizer, seq_len, batch_size, seed)
    rows = loader.dataset
    assert isinstance(rows, PackedRows)
    return StageBatches(prepare(loader), rows, sharers)


def check_stage_data(train: TrainSpec, tokenizer) -> None:
    """Every stage's sources checked before the first step (missing files, chat sources without a template)."""
    for index, stage in enumerate(train.stages):
        spec = train.stage_data(index)
        base = f"train.stages[{index}].data" if stage.data is not None else "train.data"
        for i, (_, _, source) in enumerate(spec.sources()):
            check_source(source, tokenizer, _label(base, spec, i))
