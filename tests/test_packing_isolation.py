"""Packed documents must not see each other: the DESIGN.md fact that training relies on.

With ``position_ids`` restarting at every document, ``attention_mask=None`` and ``use_cache=False``,
transformers builds a block-diagonal causal mask, so each packed document's logits equal its logits alone.
An all-ones attention mask switches that off and the documents leak into each other.
"""

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.micro_models import micro_llama
from toolkit.data.packing import Document, pack_rows

SEQ_LEN = 64
DOC_LENGTHS = (17, 31, 9)


def _model(attention: str) -> LlamaForCausalLM:
    return micro_llama(attention, SEQ_LEN)


def _packed_row() -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 128, (n,), generator=generator) for n in DOC_LENGTHS]
    rows = list(pack_rows([Document(d.tolist(), d.tolist()) for d in docs], SEQ_LEN, "pack", pad_id=0))
    assert len(rows) == 1
    return docs, {key: torch.tensor([value]) for key, value in rows[0].items()}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_documents_match_documents_alone(attention):
    model = _model(attention)
    docs, row = _packed_row()
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], attention_mask=None,
                       use_cache=False).logits[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=doc[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(doc)], alone, atol=1e-5, rtol=1e-5)
            start += len(doc)
    assert start == sum(DOC_LENGTHS) < SEQ_LEN  # the padding tail is a document of its own


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_an_attention_mask_makes_documents_leak(attention):
    model = _model(attention)
    docs, row = _packed_row()
    with torch.no_grad():
        leaky = model(input_ids=row["input_ids"], position_ids=row["position_ids"],
                      attention_mask=torch.ones_like(row["input_ids"]), use_cache=False).logits[0]
        second = len(docs[0])
        first_alone = model(input_ids=docs[0][None], use_cache=False).logits[0]
        second_alone = model(input_ids=docs[1][None], use_cache=False).logits[0]
    torch.testing.assert_close(leaky[:second], first_alone, atol=1e-5, rtol=1e-5)  # nothing before it to see
    assert (leaky[second:second + len(docs[1])] - second_alone).abs().max() > 1e-2
