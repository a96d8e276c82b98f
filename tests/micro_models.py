"""Micro Llamas for attention and optimisation tests, the packed rows they run on, and the checks they share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import MICRO_SHAPE
from toolkit.data.batches import Batch, collate
from toolkit.data.packing import Document, pack_rows


def micro_config(**settings: Any) -> LlamaConfig:
    """The micro Llama's config (:data:`MICRO_SHAPE`) with ``settings`` added or replaced."""
    return LlamaConfig(**{**MICRO_SHAPE, **settings})


def micro_llama(attention: str, max_positions: int) -> LlamaForCausalLM:
    """A 2-layer, 64-wide Llama in eval mode on ``attention``, the same weights on every call."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(micro_config(vocab_size=128, max_position_embeddings=max_positions)).eval()
    model.set_attn_implementation(attention)
    return model


def packed_batch(lengths: Sequence[Sequence[int]], seq_len: int) -> tuple[list[list[torch.Tensor]], Batch]:
    """Random documents (tokens 3-127, loss on all) of ``lengths``, the documents of each inner sequence packed into
    one row of ``seq_len`` by the data path; the documents row by row, and the batch."""
    generator = torch.Generator().manual_seed(1)
    docs, rows = [], []
    for row_lengths in lengths:
        row_docs = [torch.randint(3, 128, (n,), generator=generator) for n in row_lengths]
        [row] = pack_rows([Document(d.tolist(), d.tolist()) for d in row_docs], seq_len, "pack", pad_id=0)
        docs.append(row_docs)
        rows.append(row)
    return docs, collate(rows)


def assert_rows_match_documents(logits: torch.Tensor, docs: Sequence[Sequence[torch.Tensor]],
                                reference: LlamaForCausalLM) -> None:
    """Each packed document's logits (row by row, documents side by side) equal the document run alone."""
    for row, row_docs in enumerate(docs):
        start = 0
        for doc in row_docs:
            alone = reference(input_ids=doc[None], use_cache=False).logits[0]
            torch.testing.assert_close(logits[row, start:start + len(doc)], alone, atol=1e-5, rtol=1e-5)
            start += len(doc)

