"""On a GPU, every kernel this installation offers trains packed rows (bf16) with documents kept apart, forward and
backward, and gives the fp32 CPU loss within bf16 rounding. Skipped without CUDA/ROCm (``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch

from tests.test_objective_rows import _model, _rows
from toolkit.attention import TORCH_VARLEN, KernelSupport, decoder_rows, select_attention
from toolkit.training.objective import CausalLMObjective

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm device")]


def _available() -> list[str]:
    support = KernelSupport.detect()
    kernels = ["sdpa"]
    if support.flex:
        kernels.append("flex_attention")
    if support.torch_varlen:
        kernels.append(TORCH_VARLEN)
    if support.flash_attn:
        kernels.append("flash_attention_2")
    return kernels


@pytest.mark.parametrize("kernel", ["flash_attention_2", TORCH_VARLEN, "flex_attention", "sdpa"])
def test_packed_rows_train_in_bf16_with_documents_apart(kernel: str) -> None:
    if kernel not in _available():
        pytest.skip(f"{kernel} is not available on this GPU")
    if kernel == TORCH_VARLEN:
        from toolkit.attention_varlen import register_torch_varlen

        register_torch_varlen()
    docs, rows = _rows()
    reference = CausalLMObjective(_model("sdpa"), loss_chunk_size=None)
    with torch.no_grad():
        expected_total, expected_count = reference(rows["input_ids"], rows["position_ids"], labels=rows["labels"])
    model = _model("sdpa").to("cuda", torch.bfloat16).train()  # type: ignore[arg-type]  # transformers' wrapped .to
    model.set_attn_implementation(kernel)
    total, count = CausalLMObjective(model, loss_chunk_size=None)(**{k: v.cuda() for k, v in rows.items()})
    assert int(count) == int(expected_count)
    assert abs(total.item() - expected_total.item()) < 2e-2 * abs(expected_total.item())  # bf16 vs fp32 CPU
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    model.zero_grad()  # what the objective gives the decoder: the second document reaches no token of the first
    first, second = len(docs[0][0]), len(docs[0][1])
    ids, positions = decoder_rows(kernel, rows["input_ids"].cuda(), rows["position_ids"].cuda())
    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    hidden[0, first:first + second].float().sum().backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad is not None
    only_first = set(rows["input_ids"][0, :first].tolist()) - set(rows["input_ids"][0, first:first + second].tolist())
    assert only_first and all(grad[t].abs().max() == 0 for t in only_first)


def test_auto_on_this_gpu_avoids_a_dense_mask() -> None:
    implementation, reason = select_attention("auto", torch.device("cuda"), torch.bfloat16)
    assert implementation in ("flash_attention_2", TORCH_VARLEN, "flex_attention"), reason
