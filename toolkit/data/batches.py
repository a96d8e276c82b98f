"""A stage's training batches: documents from the stage's source, packed to ``seq_len``, stacked into tensors.

The stream is endless and a pure function of (data spec, tokenizer, seq_len, batch size, seed, process), so a
resumed run reproduces it and skips the batches it already consumed by drawing and discarding them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import islice

import torch

from toolkit.data.packing import pack_rows
from toolkit.data.sources import text_documents
from toolkit.data.synthetic import synthetic_documents
from toolkit.data.tokens import pad_id
from toolkit.schema import DataSpec

BATCH_KEYS = ("input_ids", "labels", "position_ids")


def process_seed(seed: int, process_index: int) -> int:
    """A seed of its own for each process (synthetic data is generated, not sharded)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{process_index}".encode()).digest()[:8], "big")


def stage_batches(spec: DataSpec, tokenizer, seq_len: int, batch_size: int, seed: int, process_index: int = 0,
                  num_processes: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches ``{"input_ids", "labels", "position_ids"}``, each a LongTensor ``[batch_size, seq_len]``."""
    if spec.source == "synthetic":
        docs = synthetic_documents(spec, tokenizer, seq_len, process_seed(seed, process_index))
    else:
        docs = text_documents(spec, tokenizer, seed, process_index=process_index, num_processes=num_processes)
    rows = pack_rows(docs, seq_len, spec.packing, pad_id(tokenizer))
    while True:
        chunk = list(islice(rows, batch_size))
        yield {key: torch.tensor([row[key] for row in chunk], dtype=torch.long) for key in BATCH_KEYS}
