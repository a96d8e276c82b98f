"""Checkpointing (with and without offload) changes memory, not results: same loss and gradients on a tiny Llama."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from tests.devices import DEVICES
from toolkit.memory.checkpointing import enable_checkpointing
from toolkit.model.lora import CausalLM

CONFIG: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=97, max_position_embeddings=128,
                              attn_implementation="sdpa")


def _model(lora: bool) -> CausalLM:
    torch.manual_seed(0)
    model: CausalLM = LlamaForCausalLM(LlamaConfig(**CONFIG))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model.train()


def _step(model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor | None]]:
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _mlp_calls(model: torch.nn.Module) -> int:
    """Forward calls of the first layer's MLP in one step (module hooks do not fire on the recompute)."""
    calls = []
    mlp: torch.nn.Module = next(m for m in model.modules() if isinstance(m, LlamaDecoderLayer)).mlp
    forward = mlp.forward

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted
    _step(model)
    return len(calls)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("offload", [False, True])
def test_same_loss_and_gradients(lora: bool, offload: bool) -> None:
    reference_loss, reference_grads = _step(_model(lora))
    model = _model(lora)
    enable_checkpointing(model, offload=offload)
    loss, grads = _step(model)
    assert loss == pytest.approx(reference_loss, abs=1e-6)
    assert grads.keys() == reference_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_layers_recompute_in_backward() -> None:
    assert _mlp_calls(_model(lora=False)) == 1
    model = _model(lora=True)
    enable_checkpointing(model, offload=False)
    assert _mlp_calls(model) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_offload_lowers_peak_device_memory(device: str) -> None:
    """Offload moves the checkpointed layers' inputs off the GPU: a lower peak there, the same loss. On CPU the
    activations already live in host memory, so offload is off and the step the same (no device memory to measure)."""
    losses, peaks = [], []
    length = 4096 if device == "cuda" else 256
    ids = torch.randint(0, CONFIG["vocab_size"], (8, length), generator=torch.Generator().manual_seed(1)).to(device)
    for offload in (False, True):
        # transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self from mypy
        model = _model(lora=False).to(device)  # type: ignore[arg-type]
        enable_checkpointing(model, offload=offload)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        if device == "cuda":
            peaks.append(torch.cuda.max_memory_allocated())
    assert losses[1] == pytest.approx(losses[0], abs=1e-5) and losses[0] == pytest.approx(4.57, abs=0.05)  # ln 97
    if device == "cuda":
        assert peaks[1] < peaks[0]
