"""Offload of checkpointed layer inputs: some or all layers, as computed or fp8; the same loss, the gradients of the
rounded inputs, the host bytes it holds, and the backward fetching each input before it is needed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.conftest import MICRO_SHAPE
from tests.devices import DEVICES
from tests.micro_models import micro_config
from toolkit.errors import UserError
from toolkit.memory.checkpointing import decoder_layers, enable_checkpointing
from toolkit.memory.offload import FP8_MAX, OffloadStore, Stored, dequantize, offloaded_layers, quantize

GRADIENT_TOLERANCE = {"cpu": (1e-6, 1e-5), "cuda": (1e-5, 1e-4)}
"""(atol, rtol) of gradients of one step with and without offload: on CUDA the attention backward may sum in
another order."""
CONFIG: dict[str, Any] = dict(num_hidden_layers=4, vocab_size=97, max_position_embeddings=2048,
                              attn_implementation="sdpa")
BATCH, LENGTH = 2, 1024  # 2 x 1024 x 64 = 131,072 elements per layer input: above OffloadStore's SMALL


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(micro_config(**CONFIG)).train()


def _step(model: torch.nn.Module, device: str = "cpu") -> tuple[float, dict[str, torch.Tensor]]:
    ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids.to(device), labels=ids.to(device)).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_offloaded_layer_count() -> None:
    assert offloaded_layers(True, 32) == 32 and offloaded_layers(False, 32) == 0 and offloaded_layers(12, 32) == 12
    with pytest.raises(UserError, match=r"train.activation_offload: 40 layers to offload, but the model has 32"):
        offloaded_layers(40, 32)


def test_fp8_round_trip_within_its_precision() -> None:
    tensor = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16) * 7
    stored, scale = quantize(tensor)
    assert stored.dtype == torch.float8_e4m3fn and stored.element_size() == 1
    assert scale.item() == pytest.approx(tensor.abs().max().item() / FP8_MAX, rel=1e-6)
    back = dequantize(stored, scale, torch.bfloat16)
    assert back.dtype == torch.bfloat16
    relative = ((back.float() - tensor.float()).abs() / tensor.float().abs().clamp_min(1e-2)).median().item()
    assert 0.005 < relative < 0.0625  # e4m3 keeps 3 mantissa bits: at most half an ulp, 2^-4
    zeros, zero_scale = quantize(torch.zeros(8))
    assert torch.equal(dequantize(zeros, zero_scale, torch.float32), torch.zeros(8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offload", [1, 3, True])
def test_offload_as_computed_keeps_loss_and_gradients(offload: bool | int, device: str) -> None:
    """On CUDA each offloaded layer's input goes to host memory and back as computed: the host holds one input a
    layer at the peak, nothing after the step, and the loss and gradients are the model's own. On CPU the inputs are
    already in host memory: the same hooks run and nothing is copied."""
    # transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self from mypy
    reference_loss, reference = _step(_model().to(device), device)  # type: ignore[arg-type]
    model = _model().to(device)  # type: ignore[arg-type]
    store = enable_checkpointing(model, offload=offload)
    assert store is not None and store.fp8 is False
    layers = decoder_layers(model)
    offloaded = [layer._gradient_checkpointing_func == store.checkpoint for layer in layers]
    assert offloaded == [i < offloaded_layers(offload, len(layers)) for i in range(len(layers))]
    loss, grads = _step(model, device)
    assert loss == pytest.approx(reference_loss, abs=1e-6)
    assert grads.keys() == reference.keys() and len(grads) == len(list(model.parameters()))
    atol, rtol = GRADIENT_TOLERANCE[device]
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], atol=atol, rtol=rtol, msg=name)
    if device == "cpu":
        assert store.peak_host_bytes == 0  # the inputs are already in host memory: nothing is copied
    else:  # each offloaded layer's input (batch x length x hidden, in the model's dtype) held at once, then freed
        element = torch.empty((), dtype=model.dtype).element_size()
        inputs = offloaded_layers(offload, len(layers)) * BATCH * LENGTH * MICRO_SHAPE["hidden_size"]
        assert store.peak_host_bytes == inputs * element
    assert store.host_bytes == 0


def test_fp8_stores_a_byte_per_element_and_perturbs_only_gradients() -> None:
    reference_loss, reference = _step(_model())
    model = _model()
    store = enable_checkpointing(model, offload=2, fp8=True)
    assert store is not None
    loss, grads = _step(model)
    assert loss == pytest.approx(reference_loss, abs=1e-6)  # the forward runs on the exact inputs
    assert store.peak_host_bytes == 2 * BATCH * LENGTH * MICRO_SHAPE["hidden_size"]  # two layers, one byte each
    assert store.host_bytes == 0  # freed with the graph
    errors = [((grads[n] - reference[n]).norm() / reference[n].norm()).item() for n in reference]
    assert 1e-4 < max(errors) < 0.1, errors


def test_backward_fetches_the_previous_layer_while_one_recomputes() -> None:
    """Each unpack starts the copy back of the input packed before it, so every input but the last layer's is
    already fetched when the backward asks for it."""
    store = OffloadStore(fp8=True)
    fetched_when_asked = []
    unpack = store.unpack

    def watched(stored: Any) -> torch.Tensor:
        if isinstance(stored, Stored):  # not the small tensors left in place (torch 2.11 saves more of them)
            fetched_when_asked.append(stored.fetched is not None)
        return unpack(stored)

    store.unpack = watched  # type: ignore[method-assign]
    model = _model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in decoder_layers(model):
        layer._gradient_checkpointing_func = store.checkpoint  # type: ignore[assignment]
    _step(model)
    assert fetched_when_asked == [False, True, True, True]


@pytest.mark.parametrize("train, error", [
    ({"activation_offload": 4}, None),
    ({"activation_offload": True, "activation_offload_dtype": "fp8"}, None),
    ({"activation_offload_dtype": "fp8"}, "needs activation_offload: true or a number of layers"),
    ({"activation_offload": -2}, "activation_offload"),
    ({"activation_offload": 4, "gradient_checkpointing": False}, "needs gradient_checkpointing"),
    ({"activation_offload_dtype": "fp4", "activation_offload": True}, "activation_offload_dtype"),
    ({"offload_layers": 4}, "offload_layers"),
])
def test_recipe_offload_settings(train: dict[str, Any], error: str | None) -> None:
    from pydantic import ValidationError

    from toolkit.recipe.schema import TrainSpec

    spec = {"stages": [{"seq_len": 64, "max_steps": 1}], "gradient_checkpointing": True, **train}
    if error is None:
        assert TrainSpec.model_validate(spec).activation_offload == train["activation_offload"]
        return
    with pytest.raises(ValidationError, match=error):
        TrainSpec.model_validate(spec)
