"""Checkpointing (with and without offload) changes memory, not results: same loss and gradients on a tiny Llama."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from tests.conftest import MICRO_SHAPE
from tests.devices import DEVICES
from tests.micro_models import micro_config
from toolkit.memory.checkpointing import enable_checkpointing
from toolkit.memory.offload import OffloadStore
from toolkit.model.lora import CausalLM

GRADIENT_TOLERANCE = {"cpu": (1e-6, 1e-5), "cuda": (1e-5, 1e-4)}
"""(atol, rtol) of gradients of one step with and without offload: on CUDA the attention backward may sum in
another order."""
CONFIG: dict[str, Any] = dict(vocab_size=97, max_position_embeddings=128, attn_implementation="sdpa")


def _model(lora: bool) -> CausalLM:
    torch.manual_seed(0)
    model: CausalLM = LlamaForCausalLM(micro_config(**CONFIG))
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


OFFLOAD_LAYERS = 6
"""Layers of the offload test's model: in the backward the store fetches the next layer's input back while one is
recomputed, so with 2 layers the peak holds as many layer inputs with offload as without."""


def _offload_step(device: str, offload: bool, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor],
                                                                          int | None, OffloadStore | None]:
    """One step of a fresh model: its loss, its gradients copied to the CPU, its peak device memory (CUDA) and its
    offload store; nothing of the step is left on the device when it returns."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(micro_config(**{**CONFIG, "num_hidden_layers": OFFLOAD_LAYERS})).train().to(device)
    store = enable_checkpointing(model, offload=offload)
    assert (store is None) == (not offload)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    grads = {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters()))
    return loss.item(), grads, peak, store


@pytest.mark.parametrize("device", DEVICES)
def test_offload_lowers_peak_device_memory(device: str) -> None:
    """Offload moves the checkpointed layers' inputs off the GPU to host memory and back: a lower peak there, every
    layer's input held in host memory at once, the same loss and gradients. On CPU the activations already live in
    host memory, so nothing is copied and the step is the same (no device memory to measure)."""
    batch, length = 8, 4096 if device == "cuda" else 256
    ids = torch.randint(0, CONFIG["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))
    loss, grads, peak, _ = _offload_step(device, False, ids.to(device))
    offloaded_loss, offloaded_grads, offloaded_peak, store = _offload_step(device, True, ids.to(device))
    uniform = math.log(CONFIG["vocab_size"])  # an untrained model's loss
    assert offloaded_loss == pytest.approx(loss, abs=1e-5) and loss == pytest.approx(uniform, abs=0.05)
    assert offloaded_grads.keys() == grads.keys()
    atol, rtol = GRADIENT_TOLERANCE[device]
    for name, grad in offloaded_grads.items():
        torch.testing.assert_close(grad, grads[name], atol=atol, rtol=rtol, msg=name)
    assert store is not None and store.host_bytes == 0  # freed with the graph
    if device == "cuda":
        assert offloaded_peak is not None and peak is not None and offloaded_peak < peak
        element = torch.empty((), dtype=torch.float32).element_size()
        assert store.peak_host_bytes == OFFLOAD_LAYERS * batch * length * MICRO_SHAPE["hidden_size"] * element
    else:
        assert store.peak_host_bytes == 0
