"""The varlen adapter (PyTorch's varlen flash attention through transformers' AttentionInterface): its document
boundaries come from the position ids, it adapts to each torch signature, and packed documents stay apart.

PyTorch's kernel runs on CUDA only; on CPU the adapter drives reference kernels with the signatures of torch 2.12+,
2.11 (the GPU image's) and 2.10 (sdpa per document, ``tests/varlen_reference.py``), so everything but the kernel
itself is exercised here. Documents stay apart forward and backward through the model: over the real kernel on a
GPU, the reference on CPU."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AttentionInterface, LlamaForCausalLM

import toolkit.model.attention_varlen as attention_varlen
from tests.devices import DEVICES
from tests.micro_models import assert_rows_match_documents, micro_llama, packed_batch
from tests.varlen_reference import per_document, reference_varlen_attn, torch_varlen_on
from toolkit.model.attention import TORCH_VARLEN, KernelSupport
from toolkit.model.attention_varlen import cudnn_here, varlen_attention
from toolkit.model.segments import ONE_DOCUMENT_ROWS, Segments, decoder_inputs

SEQ_LEN = 48
DOCS = ((11, 20, 9), (30, 7))  # two packed rows; each ends in a padding tail of its own


def kernel_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10: ``is_causal``, no scale, equal head counts."""
    assert query.shape[1] == key.shape[1]
    return per_document(query, key, value, cu_seq_q, is_causal, None, False)


def kernel_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1)):
    """torch 2.11 (the GPU image's): causal as a window, a scale, equal head counts (no ``enable_gqa``)."""
    assert query.shape[1] == key.shape[1]
    return per_document(query, key, value, cu_seq_q, tuple(window_size) == (-1, 0), scale, False)


def test_a_reference_takes_what_this_torchs_kernel_takes() -> None:
    """The CPU stand-in of this torch's own ``varlen_attn`` (2.12 and newer, or 2.11) takes its arguments alone, by
    name, kind and default, and every argument torch's kernel requires: what torch takes beyond it has a default
    (a newer torch's optional extras, which the adapter does not pass)."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    theirs = inspect.signature(varlen.varlen_attn).parameters
    if "window_size" not in theirs:
        pytest.skip("this torch's varlen_attn has the torch 2.10 signature (kernel_2_10)")
    stand_in = reference_varlen_attn if "enable_gqa" in theirs else kernel_2_11
    ours = inspect.signature(stand_in).parameters
    assert all(name in theirs and (p.kind, p.default) == (theirs[name].kind, theirs[name].default)
               for name, p in ours.items())
    required = {name for name, p in theirs.items() if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    assert required <= ours.keys(), sorted(required - ours.keys())
    assert list(ours) == [name for name in theirs if name in ours]  # in torch's order


def test_cu_seqlens_from_restarting_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    segments = Segments.of(positions)
    assert segments.cu_seqlens.tolist() == [0, 3, 5, 9, 15, 18] and segments.cu_seqlens.dtype == torch.int32
    assert segments.longest == 6 and not segments.one_per_row
    # a row whose positions continue the previous row's still starts a document of its own
    whole = Segments.of(torch.arange(8).reshape(2, 4))
    assert whole.cu_seqlens.tolist() == [0, 4, 8] and whole.one_per_row


def _model(attention: str) -> LlamaForCausalLM:
    return micro_llama(attention, SEQ_LEN)


@pytest.mark.parametrize("kernel", [reference_varlen_attn, kernel_2_11, kernel_2_10])
def test_packed_rows_under_the_adapter_equal_each_document_alone(kernel) -> None:
    seen: list[object] = []
    adapter = varlen_attention(kernel)

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return adapter(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(f"test_varlen_{kernel.__name__}", spy)
    model, reference = _model(f"test_varlen_{kernel.__name__}"), _model("sdpa")
    docs, rows = packed_batch(DOCS, SEQ_LEN)
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


@pytest.mark.parametrize("device", DEVICES)
def test_torch_varlen_keeps_documents_apart_forward_and_backward(device: str) -> None:
    if device == "cuda" and not KernelSupport.detect().torch_varlen:
        pytest.skip("no PyTorch varlen flash attention on this GPU")
    # the ignore: transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self
    reference = _model("sdpa").to(device, torch.bfloat16)  # type: ignore[arg-type]
    docs, rows = packed_batch(DOCS, SEQ_LEN)
    ids, positions = rows["input_ids"].to(device), rows["position_ids"].to(device)
    with torch_varlen_on(device):
        model = _model(TORCH_VARLEN).to(device, torch.bfloat16)  # type: ignore[arg-type]
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits[0, 11:31].float().sum().backward()  # the second document's outputs only
    start = 0
    for doc in docs[0]:
        alone = reference(input_ids=doc[None].to(device), use_cache=False).logits[0]
        torch.testing.assert_close(logits[0, start:start + len(doc)].float(), alone.float(), atol=3e-2, rtol=3e-2)
        start += len(doc)
    embedding_grad = model.model.embed_tokens.weight.grad
    assert embedding_grad is not None
    first_only = set(ids[0, :11].tolist()) - set(ids[0, 11:31].tolist())
    assert first_only and all(embedding_grad[t].abs().max() == 0 for t in first_only)  # nothing flows across


def test_evaluation_runs_on_sdpa_and_training_returns_to_varlen() -> None:
    from toolkit.model.attention import TORCH_VARLEN
    from toolkit.model.attention_varlen import register_torch_varlen
    from toolkit.model.loading import evaluating
    from toolkit.model.lora import apply_lora
    from toolkit.recipe.schema import LoraSpec

    register_torch_varlen()
    model = apply_lora(_model(TORCH_VARLEN).train(), LoraSpec(r=4))
    with evaluating(model):
        assert model.config._attn_implementation == "sdpa" and not model.training
        # a padded batch evaluates (the varlen kernel would refuse its mask)
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1, 1]] * 2))
    assert model.config._attn_implementation == TORCH_VARLEN and model.training


@pytest.mark.parametrize("device", DEVICES)
def test_rows_of_one_document_take_sdpa_where_the_rule_says(device: str, monkeypatch) -> None:
    """Rows that each hold one whole document go to causal sdpa (cuDNN first) where the rule says so: on a GPU the
    rule itself (Hopper, bf16), on CPU forced; outputs and gradients equal the varlen kernel's."""
    from torch.nn.attention.varlen import varlen_attn

    if device == "cuda" and not KernelSupport.detect().torch_varlen:
        pytest.skip("no PyTorch varlen flash attention on this GPU")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kernel, rule = (varlen_attn, cudnn_here) if device == "cuda" else (reference_varlen_attn, lambda q: True)
    taken: list[int] = []
    original = attention_varlen.causal_sdpa

    def counted(*args):
        taken.append(1)
        return original(*args)

    monkeypatch.setattr(attention_varlen, "causal_sdpa", counted)
    ids = torch.randint(3, 128, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0)).to(device)
    inputs = decoder_inputs(TORCH_VARLEN, ids, torch.arange(SEQ_LEN, device=device).expand(2, SEQ_LEN), ids)
    assert inputs.kernel_kwargs()[ONE_DOCUMENT_ROWS]
    results = []
    for route in (lambda q: False, rule):
        AttentionInterface.register(TORCH_VARLEN, varlen_attention(kernel, one_document=route))
        model = _model(TORCH_VARLEN).to(device, dtype)  # type: ignore[arg-type]  # as above
        hidden = model.model(input_ids=inputs.input_ids, position_ids=inputs.position_ids, use_cache=False,
                             **inputs.kernel_kwargs()).last_hidden_state
        hidden.float().square().mean().backward()
        grad = model.model.layers[0].self_attn.k_proj.weight.grad
        assert grad is not None
        results.append((hidden.detach().float(), grad.float()))
    AttentionInterface._global_mapping.pop(TORCH_VARLEN, None)
    routed = rule(torch.zeros(1, device=device, dtype=dtype))
    assert len(taken) == (2 if routed else 0)  # one call per layer, the backward reuses the forward's outputs
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-5
    for varlen, sdpa in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(sdpa, varlen, atol=tolerance, rtol=tolerance)
