"""What the decoder gets for packed rows (``toolkit.model.segments``): the padding tail continued for dense-mask
kernels and split into segments of its own for the others (no real output changes, the attention work on padding
becomes linear), the document boundaries computed once per forward and handed to every layer."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig
from transformers.masking_utils import create_causal_mask
from transformers.utils.import_utils import is_torch_flex_attn_available

from tests.micro_models import micro_llama, packed_batch
from tests.varlen_reference import reference_varlen_attn, torch_varlen_on
from toolkit.data.packing import IGNORE_INDEX
from toolkit.model.attention import TORCH_VARLEN
from toolkit.model.attention_varlen import varlen_attention
from toolkit.model.segments import (
    ONE_DOCUMENT_ROWS,
    Segments,
    continue_padding_tail,
    decoder_inputs,
    decoder_rows,
    split_padding_tail,
)
from toolkit.training.objective import CausalLMObjective, objective_loss

SEQ_LEN = 300
DOCS = ((40,), (25, 30))  # row 1: one document and 260 tokens of padding; row 2: two documents and 245


def test_the_padding_tail_continues_the_last_document() -> None:
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2],    # one document, then padding
                              [0, 1, 2, 0, 1, 2, 0, 1],    # two documents, then padding
                              [0, 1, 2, 3, 0, 1, 2, 3],    # the last document has a label: kept
                              [0, 1, 2, 3, 4, 5, 6, 7]])   # no tail
    labels = torch.full_like(positions, 7)
    labels[:2, 5:] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    labels[2, 4:7] = IGNORE_INDEX
    assert continue_padding_tail(positions, labels).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7],
                                                                 [0, 1, 2, 0, 1, 2, 3, 4],
                                                                 [0, 1, 2, 3, 0, 1, 2, 3],
                                                                 [0, 1, 2, 3, 4, 5, 6, 7]]


def test_the_padding_tail_splits_into_segments_of_its_own() -> None:
    _, rows = packed_batch(DOCS, SEQ_LEN)
    split = split_padding_tail(rows["position_ids"], rows["labels"])
    assert split[0].tolist() == [*range(40), *range(128), *range(128), *range(4)]
    assert split[1].tolist() == [*range(25), *range(30), *range(128), *range(117)]
    no_tail = torch.arange(8)[None]
    assert torch.equal(split_padding_tail(no_tail, no_tail), no_tail)


def test_flash_attention_rows_are_flattened_and_others_kept() -> None:
    ids, positions = torch.arange(12).reshape(2, 6), torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    flat_ids, flat_positions = decoder_rows("flash_attention_2", ids, positions)
    assert flat_ids.shape == (1, 12) and flat_positions.tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 5]]
    for kernel in (TORCH_VARLEN, "flex_attention", "sdpa"):
        assert decoder_rows(kernel, ids, positions)[0] is ids


@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_4", TORCH_VARLEN])
def test_varlen_kernels_do_no_quadratic_work_on_padding(kernel: str) -> None:
    """The attention work (sum of segment length squared) counts the documents and 128-token padding segments:
    40² + 2·128² + 4² and 25² + 30² + 128² + 117², against 300² and 25² + 275² with the tail joined on."""
    _, rows = packed_batch(DOCS, SEQ_LEN)
    inputs = decoder_inputs(kernel, rows["input_ids"], rows["position_ids"], rows["labels"])
    assert inputs.segments is not None
    work = sum(n * n for n in inputs.segments.cu_seqlens.diff().tolist())
    assert work == 40**2 + 2 * 128**2 + 4**2 + 25**2 + 30**2 + 128**2 + 117**2 == 65_982
    joined = Segments.of(continue_padding_tail(rows["position_ids"], rows["labels"]).reshape(1, -1))
    assert sum(n * n for n in joined.cu_seqlens.diff().tolist()) == 300**2 + 25**2 + 275**2 == 166_250
    assert inputs.segments.longest == 128 and inputs.segments.cu_seqlens.dtype == torch.int32
    assert inputs.kernel_kwargs()["max_length_q"] == 128 and not inputs.kernel_kwargs()[ONE_DOCUMENT_ROWS]
    assert decoder_inputs("sdpa", rows["input_ids"], rows["position_ids"], rows["labels"]).kernel_kwargs() == {}


def test_outputs_at_real_positions_and_the_loss_are_unchanged() -> None:
    """Under the varlen path (reference kernel on CPU) the real tokens' outputs with the padding split off equal
    those with the tail joined on, exactly; the objective's loss equals sdpa's (tail joined) to float rounding."""
    _, rows = packed_batch(DOCS, SEQ_LEN)
    ids, positions, labels = rows["input_ids"], rows["position_ids"], rows["labels"]
    real = labels != IGNORE_INDEX
    with torch_varlen_on("cpu"), torch.no_grad():
        model = micro_llama(TORCH_VARLEN, SEQ_LEN)
        joined = model.model(input_ids=ids, position_ids=continue_padding_tail(positions, labels), use_cache=False)
        inputs = decoder_inputs(TORCH_VARLEN, ids, positions, labels)
        split = model.model(input_ids=inputs.input_ids, position_ids=inputs.position_ids, use_cache=False,
                            **inputs.kernel_kwargs())
        assert torch.equal(split.last_hidden_state[real], joined.last_hidden_state[real])
        total, count = objective_loss(CausalLMObjective(model, None), rows)
        expected, expected_count = objective_loss(CausalLMObjective(micro_llama("sdpa", SEQ_LEN), None), rows)
    assert int(count) == int(expected_count) == 39 + 24 + 29
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


def test_the_boundaries_are_computed_once_per_forward(monkeypatch) -> None:
    """One ``Segments.of`` per objective forward; every layer's kernel gets that same tensor."""
    seen: list[torch.Tensor] = []
    built: list[Segments] = []
    adapter = varlen_attention(reference_varlen_attn)
    original = Segments.of.__func__  # type: ignore[attr-defined]

    def spy_of(cls, position_ids):
        built.append(original(cls, position_ids))
        return built[-1]

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs["cu_seq_lens_q"])
        return adapter(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(Segments, "of", classmethod(spy_of))
    AttentionInterface.register(TORCH_VARLEN, spy)
    try:
        _, rows = packed_batch(DOCS, SEQ_LEN)
        with torch.no_grad():
            objective_loss(CausalLMObjective(micro_llama(TORCH_VARLEN, SEQ_LEN), None), rows)
    finally:
        AttentionInterface._global_mapping.pop(TORCH_VARLEN, None)
    assert len(built) == 1 and len(seen) == 2 and all(t is built[0].cu_seqlens for t in seen)


def _flex_blocks(positions: torch.Tensor) -> int:
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    config._attn_implementation = "flex_attention"
    mask = create_causal_mask(config=config, inputs_embeds=torch.zeros(*positions.shape, 16), attention_mask=None,
                              past_key_values=None, position_ids=positions)
    from torch.nn.attention.flex_attention import BlockMask

    assert isinstance(mask, BlockMask)
    full = mask.full_kv_num_blocks
    return int(mask.kv_num_blocks.sum()) + (int(full.sum()) if full is not None else 0)


@pytest.mark.skipif(not is_torch_flex_attn_available(), reason="flex_attention not in this torch")
def test_flex_computes_no_blocks_of_padding_against_documents() -> None:
    """A 1024-token row: a 256-token document and 768 of padding. Joined on, the causal row computes 36 of the
    64 128×128 blocks; split off, 3 for the document and one per padding segment, 9."""
    positions = torch.arange(1024)[None]
    labels = torch.full_like(positions, 5)
    labels[:, 256:] = IGNORE_INDEX
    packed = torch.cat([torch.arange(256), torch.arange(768)])[None]
    assert _flex_blocks(continue_padding_tail(packed, labels)) == 36
    assert _flex_blocks(decoder_inputs("flex_attention", packed, packed, labels).position_ids) == 9
    assert _flex_blocks(positions) == 36
