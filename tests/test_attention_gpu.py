"""Every attention kernel trains packed rows in bf16 with documents kept apart, forward and backward, and gives the
fp32 loss within bf16 rounding: on the CPU sdpa, flex_attention (forward only: it has no CPU backward) and the varlen
path over a reference kernel; on a GPU every kernel this installation offers (``pytest -m gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.devices import DEVICES
from tests.micro_models import micro_llama, packed_batch
from tests.steps import step_parts
from tests.varlen_reference import torch_varlen_on
from toolkit.data.batches import as_batch
from toolkit.model.attention import FLASH_ATTENTION_4, TORCH_VARLEN, KernelSupport, select_attention
from toolkit.model.segments import decoder_rows
from toolkit.training.loop import train_step
from toolkit.training.objective import CausalLMObjective, objective_loss

SEQ_LEN = 48
DOCS = ((11, 20, 9), (30, 7))  # two packed rows; each ends in a padding tail of its own


def _available(device: str) -> list[str]:
    if device == "cpu":
        return ["sdpa", "flex_attention", TORCH_VARLEN]  # varlen through tests/varlen_reference.py
    support = KernelSupport.detect()
    return ["sdpa", *(["flex_attention"] if support.flex else []), *([TORCH_VARLEN] if support.torch_varlen else []),
            *(["flash_attention_2"] if support.flash_attn else []),
            *([FLASH_ATTENTION_4] if support.flash_attn_4 else [])]


@pytest.mark.parametrize("kernel", [FLASH_ATTENTION_4, "flash_attention_2", TORCH_VARLEN, "flex_attention", "sdpa"])
@pytest.mark.parametrize("device", DEVICES)
def test_packed_rows_train_in_bf16_with_documents_apart(device: str, kernel: str, tmp_path: Path) -> None:
    if kernel not in _available(device):
        pytest.skip(f"{kernel} is not available on this {device}")
    trains = device != "cpu" or kernel != "flex_attention"
    docs, batch = packed_batch(DOCS, SEQ_LEN)
    with torch.no_grad():
        total, count = objective_loss(CausalLMObjective(micro_llama("sdpa", 2 * SEQ_LEN), None), batch)
    expected = total.item() / int(count)  # fp32 on CPU
    assert int(count) == sum(n - 1 for row in DOCS for n in row)
    # the ignore: transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self
    model = micro_llama("sdpa", 2 * SEQ_LEN).to(device, torch.bfloat16).train()  # type: ignore[arg-type]
    with torch_varlen_on(device):
        model.set_attn_implementation(kernel)
        if trains:  # one optimizer step of the loop on the rows the data path packed
            before = [p.detach().clone() for p in model.parameters()]
            with step_parts(model, device, tmp_path) as parts:
                loss = train_step(parts, [batch], "bf16", 1)
            # every matrix moved (the norm weights, at 1.0, by less than half a bf16 step: they keep their value)
            moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True) if p.dim() == 2]
            assert all(torch.isfinite(p).all() for p in model.parameters()) and moved == [True] * 16
        else:
            with torch.no_grad():
                total, count = objective_loss(CausalLMObjective(model, None), as_batch(batch, device))
            loss = total.item() / int(count)
        assert loss == pytest.approx(expected, rel=2e-2)  # bf16 against fp32

        # what the objective gives the decoder: the first document reaches no output of the second
        first, second = len(docs[0][0]), len(docs[0][1])
        ids, positions = batch["input_ids"].to(device), batch["position_ids"].to(device)
        changed = ids.clone()
        changed[0, :first] = (changed[0, :first] + 1) % 128  # the first document's tokens, all of them other

        def second_document(input_ids: torch.Tensor) -> torch.Tensor:
            rows, row_positions = decoder_rows(kernel, input_ids, positions)
            hidden = model.model(input_ids=rows, position_ids=row_positions, use_cache=False).last_hidden_state
            return hidden.view(*input_ids.shape, -1)[0, first:first + second]

        with torch.no_grad():
            torch.testing.assert_close(second_document(changed), second_document(ids), atol=0, rtol=0)
        if not trains:
            return
        model.zero_grad()
        second_document(ids).float().sum().backward()
        grad = model.model.embed_tokens.weight.grad
        assert grad is not None
        only_first = set(ids[0, :first].tolist()) - set(ids[0, first:first + second].tolist())
        assert only_first and all(grad[t].abs().max() == 0 for t in only_first)  # no gradient flows across


@pytest.mark.parametrize("device", DEVICES)
def test_auto_on_this_device_avoids_the_dense_mask(device: str) -> None:
    """On a GPU auto avoids the dense L×L mask; on CPU it takes sdpa (flex cannot train there)."""
    implementation, reason = select_attention("auto", torch.device(device), torch.bfloat16)
    if device == "cpu":
        assert (implementation, reason) == ("sdpa", "auto: no CUDA device (cpu), so PyTorch sdpa")
    else:
        assert implementation in (FLASH_ATTENTION_4, "flash_attention_2", TORCH_VARLEN, "flex_attention"), reason
