"""How the objective gives packed rows to the decoder: flattened to one row for flash-attn, padding tail continued,
a warning where a dense mask gets large; every document's logits stay those of the document alone."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AttentionInterface, AttentionMaskInterface, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

import toolkit.training.objective as objective_module
from tests.micro_models import assert_rows_match_documents, micro_llama, packed_batch
from toolkit.data.batches import Batch
from toolkit.data.packing import IGNORE_INDEX
from toolkit.memory.chunked_loss import causal_lm_loss
from toolkit.model.segments import decoder_rows
from toolkit.training.objective import CausalLMObjective, objective_loss

SEQ_LEN = 48
DOCS = ((11, 20, 9), (30, 7))


def _model(attention: str) -> LlamaForCausalLM:
    return micro_llama(attention, 2 * SEQ_LEN)  # flattened rows (flash-attn) run to 2·L positions


def _rows(lengths=DOCS) -> tuple[list[list[torch.Tensor]], Batch]:
    return packed_batch(lengths, SEQ_LEN)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex_attention"])
def test_rows_flattened_for_flash_attention_keep_documents_apart(attention: str) -> None:
    """Two packed rows as one row of 2·L tokens (what flash-attn's varlen gets), run here under kernels that run on
    CPU: each document's logits equal the document alone (max difference well under 1e-5)."""
    model, reference = _model(attention), _model("sdpa")
    docs, rows = _rows()
    flat_ids, flat_positions = decoder_rows("flash_attention_2", rows["input_ids"], rows["position_ids"])
    assert flat_ids.shape == (1, 2 * SEQ_LEN)
    with torch.no_grad():
        hidden = model.model(input_ids=flat_ids, position_ids=flat_positions, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden.view(2, SEQ_LEN, -1))
        assert_rows_match_documents(logits, docs, reference)


def test_the_objective_loss_is_the_documents_own() -> None:
    """The objective's loss on packed rows equals the loss of every document computed alone, and the flattened
    rows (flash-attn) give the same loss."""
    model = _model("sdpa")
    docs, rows = _rows()
    with torch.no_grad():
        total, count = objective_loss(CausalLMObjective(model, loss_chunk_size=None), rows)
        flat_ids, flat_positions = decoder_rows("flash_attention_2", rows["input_ids"], rows["position_ids"])
        hidden = model.model(input_ids=flat_ids, position_ids=flat_positions, use_cache=False).last_hidden_state
        flat_total, _ = causal_lm_loss(hidden.view(2, SEQ_LEN, -1), model.lm_head, rows["labels"], None)
        alone = []
        for doc in (d for row_docs in docs for d in row_docs):
            labels = doc.clone()
            labels[0] = IGNORE_INDEX
            alone.append(causal_lm_loss(model.model(input_ids=doc[None]).last_hidden_state, model.lm_head,
                                        labels[None], None))
        alone_total, alone_count = sum(t for t, _ in alone), sum(int(c) for _, c in alone)
    assert int(count) == alone_count == sum(n - 1 for row in DOCS for n in row)
    torch.testing.assert_close(total, alone_total, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(flat_total, total, atol=1e-4, rtol=1e-6)


def test_one_document_rows_reach_sdpa_without_a_mask() -> None:
    """With the padding tail continued, a row holding one document runs causal: transformers builds no mask."""
    masks: list[torch.Tensor | None] = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("spy_sdpa", spy)
    AttentionMaskInterface.register("spy_sdpa", sdpa_mask)
    model = _model("spy_sdpa")
    objective = CausalLMObjective(model, loss_chunk_size=None)
    _, one_document = _rows(((30,), (41,)))  # each row: one document, then its padding tail
    with torch.no_grad():
        objective_loss(objective, one_document)
        assert masks == [None, None]
        _, packed = _rows()
        objective_loss(objective, packed)
    assert masks[-1] is not None and masks[-1].shape == (2, 1, SEQ_LEN, SEQ_LEN)


def test_a_large_dense_mask_is_warned_about_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(objective_module, "DENSE_MASK_WARNING", 2 * SEQ_LEN * SEQ_LEN)
    objective = CausalLMObjective(_model("sdpa"), loss_chunk_size=None)
    _, rows = _rows()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="toolkit"):
        for _ in range(2):
            objective_loss(objective, rows)
    warnings = [r.getMessage() for r in caplog.records if "dense" in r.getMessage()]
    assert warnings == ["model.attention sdpa: rows holding several documents make transformers build a dense "
                        "[2,1,48,48] mask of 0.0 GiB (and disable sdpa's flash kernel); model.attention: auto keeps "
                        "packed rows linear in memory on a GPU"]
