"""A stage's training batches: documents from the stage's source or mixture, packed to ``seq_len``, stacked into
tensors, with the tokens each source contributed counted as they are drawn.

The stream is endless and a pure function of (data spec, tokenizer, seq_len, batch size, seed, process), so a
resumed run reproduces it and skips the batches it already consumed by drawing and discarding them (and so the
counts match an uninterrupted run's too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch

from toolkit.data.mixture import interleave
from toolkit.data.packing import PAD_SOURCE, pack_rows
from toolkit.data.sources import check_source, source_documents
from toolkit.data.tokens import pad_id
from toolkit.schema import DataSpec, TrainSpec

BATCH_KEYS = ("input_ids", "labels", "position_ids")
SOURCE_SEED_STRIDE = 7919
"""Source ``i`` of a mixture streams with seed ``seed + i * SOURCE_SEED_STRIDE`` (source 0 keeps ``seed``)."""


def _label(base: str, spec: DataSpec, index: int) -> str:
    return f"{base}.mixture[{index}]" if spec.mixture is not None else base


class StageBatches(Iterator[dict[str, torch.Tensor]]):
    """Endless batches ``{"input_ids", "labels", "position_ids"}``, each a LongTensor ``[batch_size, seq_len]``;
    ``tokens[i]`` counts the (non-padding) tokens of source ``i`` in the batches drawn so far, ``skipped[i]`` its
    bad records skipped."""

    def __init__(self, spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int, process_index: int = 0,
                 num_processes: int = 1, label: str = "train.data"):
        sources = spec.sources()
        self.names = [name for name, _, _ in sources]
        self.weights = [weight for _, weight, _ in sources]
        self.tokens = [0] * len(sources)
        self.skipped = [0] * len(sources)
        self.batch_size = batch_size
        streams = [source_documents(source, tokenizer, seq_len, seed + i * SOURCE_SEED_STRIDE, process_index,
                                    num_processes, _label(label, spec, i), self._skip_counter(i))
                   for i, (_, _, source) in enumerate(sources)]
        docs = streams[0] if len(streams) == 1 else interleave(streams, self.weights)
        self._rows = pack_rows(docs, seq_len, spec.packing, pad_id(tokenizer))

    def _skip_counter(self, index: int) -> Callable[[], None]:
        def skip() -> None:
            self.skipped[index] += 1
        return skip

    def __next__(self) -> dict[str, torch.Tensor]:
        chunk = list(islice(self._rows, self.batch_size))
        sources = torch.tensor([row["sources"] for row in chunk], dtype=torch.long)
        drawn = torch.bincount(sources[sources != PAD_SOURCE], minlength=len(self.tokens)).tolist()
        self.tokens = [a + b for a, b in zip(self.tokens, drawn, strict=True)]
        return {key: torch.tensor([row[key] for row in chunk], dtype=torch.long) for key in BATCH_KEYS}

    def logged(self, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, Any]:
        """What ``metrics.jsonl`` records of the data: per source its weight, tokens drawn and bad rows skipped
        since the stage began; ``total`` sums a tensor over processes."""
        counts = total(torch.tensor([self.tokens, self.skipped], dtype=torch.long)).tolist()
        record: dict[str, Any] = {"source_weights": dict(zip(self.names, self.weights, strict=True)),
                                  "source_tokens": dict(zip(self.names, counts[0], strict=True))}
        if any(counts[1]):
            record["source_skipped_rows"] = dict(zip(self.names, counts[1], strict=True))
        return record


def stage_batches(spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int, process_index: int = 0,
                  num_processes: int = 1) -> StageBatches:
    """The batches of one stage (see :class:`StageBatches`)."""
    return StageBatches(spec, tokenizer, seq_len, batch_size, seed, process_index, num_processes)


def check_stage_data(train: TrainSpec, tokenizer) -> None:
    """Every stage's sources checked before the first step (missing files, chat sources without a template)."""
    for index, stage in enumerate(train.stages):
        spec = train.stage_data(index)
        base = f"train.stages[{index}].data" if stage.data is not None else "train.data"
        for i, (_, _, source) in enumerate(spec.sources()):
            check_source(source, tokenizer, _label(base, spec, i))
