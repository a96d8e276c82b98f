"""The varlen adapter (PyTorch's varlen flash attention through transformers' AttentionInterface): its document
boundaries come from the position ids, it adapts to each torch signature, and packed documents stay apart.

PyTorch's kernel runs on CUDA only; on CPU the adapter drives reference kernels with the torch 2.13 and 2.10
signatures (sdpa per document), so everything but the kernel itself is exercised here. The GPU test at the end
runs the real kernel, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, LlamaForCausalLM

from tests.micro_models import assert_rows_match_documents, micro_llama
from toolkit.attention_varlen import cu_seqlens, varlen_attention
from toolkit.data.packing import Document, pack_rows

SEQ_LEN = 48
DOCS = ((11, 20, 9), (30, 7))  # two packed rows; each ends in a padding tail of its own


def _per_document(q, k, v, cu_q, causal: bool, scale: float | None, gqa: bool) -> torch.Tensor:
    bounds = cu_q.tolist()
    out = [F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                          is_causal=causal, scale=scale, enable_gqa=gqa).transpose(0, 1)
           for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(out)


def kernel_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False):
    """torch 2.12+: causal as a window, native GQA."""
    assert torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32 and max_q == max_k
    assert max_q == int((cu_seq_q[1:] - cu_seq_q[:-1]).max())
    return _per_document(query, key, value, cu_seq_q, tuple(window_size) == (-1, 0), scale, enable_gqa)


def kernel_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10: ``is_causal``, no scale, equal head counts."""
    assert query.shape[1] == key.shape[1]
    return _per_document(query, key, value, cu_seq_q, is_causal, None, False)


def test_cu_seqlens_from_restarting_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    bounds, longest = cu_seqlens(positions)
    assert bounds.tolist() == [0, 3, 5, 9, 15, 18] and bounds.dtype == torch.int32 and longest == 6
    # a row whose positions continue the previous row's still starts a document of its own
    assert cu_seqlens(torch.arange(8).reshape(2, 4))[0].tolist() == [0, 4, 8]


def _model(attention: str) -> LlamaForCausalLM:
    return micro_llama(attention, SEQ_LEN)


def _rows() -> tuple[list[list[torch.Tensor]], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    docs, rows = [], []
    for lengths in DOCS:
        row_docs = [torch.randint(3, 128, (n,), generator=generator) for n in lengths]
        packed = list(pack_rows([Document(d.tolist(), d.tolist()) for d in row_docs], SEQ_LEN, "pack", pad_id=0))
        assert len(packed) == 1
        docs.append(row_docs)
        rows.append(packed[0])
    return docs, {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


@pytest.mark.parametrize("kernel", [kernel_2_13, kernel_2_10])
def test_packed_rows_under_the_adapter_equal_each_document_alone(kernel) -> None:
    seen: list[object] = []
    adapter = varlen_attention(kernel)

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return adapter(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(f"test_varlen_{kernel.__name__}", spy)
    model, reference = _model(f"test_varlen_{kernel.__name__}"), _model("sdpa")
    docs, rows = _rows()
    with torch.no_grad():
        packed = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"], use_cache=False).logits
        assert_rows_match_documents(packed, docs, reference)
    assert seen == [None, None]  # one call per layer, and transformers built no mask at all


def test_the_adapter_refuses_what_it_cannot_do() -> None:
    adapter = varlen_attention(kernel_2_10)
    q = torch.zeros(1, 4, 6, 16)
    with pytest.raises(ValueError, match="without an attention mask"):
        adapter(None, q, q, q, torch.ones(1, 1, 6, 6, dtype=torch.bool), position_ids=torch.arange(6)[None])
    with pytest.raises(ValueError, match="no scale argument"):
        adapter(None, q, q, q, None, scaling=0.5, position_ids=torch.arange(6)[None])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_varlen_on_gpu_keeps_documents_apart_forward_and_backward() -> None:
    from toolkit.attention import KernelSupport
    from toolkit.attention_varlen import register_torch_varlen

    if not KernelSupport.detect().torch_varlen:
        pytest.skip("no PyTorch varlen flash attention on this GPU")
    register_torch_varlen()
    # the ignore: transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self
    model = _model("torch_varlen").to("cuda", torch.bfloat16)  # type: ignore[arg-type]
    reference = _model("sdpa").to("cuda", torch.bfloat16)  # type: ignore[arg-type]
    docs, rows = _rows()
    rows = {k: v.cuda() for k, v in rows.items()}
    logits = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"], use_cache=False).logits
    logits[0, 11:31].float().sum().backward()  # the second document's outputs only
    start = 0
    for doc in docs[0]:
        alone = reference(input_ids=doc[None].cuda(), use_cache=False).logits[0]
        torch.testing.assert_close(logits[0, start:start + len(doc)].float(), alone.float(), atol=3e-2, rtol=3e-2)
        start += len(doc)
    embedding_grad = model.model.embed_tokens.weight.grad
    assert embedding_grad is not None
    first_only = set(rows["input_ids"][0, :11].tolist()) - set(rows["input_ids"][0, 11:31].tolist())
    assert first_only and all(embedding_grad[t].abs().max() == 0 for t in first_only)  # nothing flows across


def test_evaluation_runs_on_sdpa_and_training_returns_to_varlen() -> None:
    from toolkit.attention import TORCH_VARLEN
    from toolkit.attention_varlen import register_torch_varlen
    from toolkit.lora import apply_lora
    from toolkit.modeling import evaluating
    from toolkit.schema import LoraSpec

    register_torch_varlen()
    model = apply_lora(_model(TORCH_VARLEN).train(), LoraSpec(r=4))
    with evaluating(model):
        assert model.config._attn_implementation == "sdpa" and not model.training
        # a padded batch evaluates (the varlen kernel would refuse its mask)
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1, 1]] * 2))
    assert model.config._attn_implementation == TORCH_VARLEN and model.training
