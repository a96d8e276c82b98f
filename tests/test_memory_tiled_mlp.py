"""The tiled MLP gives the untiled outputs and gradients, keeps parameter names, and keeps tiles small."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.conftest import MICRO_SHAPE
from tests.micro_models import micro_config
from toolkit.errors import UserError
from toolkit.memory.checkpointing import enable_checkpointing
from toolkit.memory.tiled_mlp import TiledForward, decoder_mlps, enable_tiled_mlp

CONFIG: dict[str, Any] = dict(intermediate_size=160, vocab_size=97, max_position_embeddings=128,
                              attn_implementation="sdpa")
LENGTH = 50


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(micro_config(**CONFIG)).train()


def _step(model: LlamaForCausalLM) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    ids = torch.randint(0, CONFIG["vocab_size"], (2, LENGTH), generator=torch.Generator().manual_seed(1))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("tiles", [1, 3, 7])  # 7 does not divide 50
@pytest.mark.parametrize("checkpointed", [False, True])
def test_same_outputs_and_gradients(tiles: int, checkpointed: bool) -> None:
    reference_logits, reference_grads = _step(_model())
    model = _model()
    enable_tiled_mlp(model, tiles)
    if checkpointed:
        enable_checkpointing(model, offload=False)
    logits, grads = _step(model)
    torch.testing.assert_close(logits, reference_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_names_kept_and_reapplying_replaces_tiles() -> None:
    model = _model()
    names = list(model.state_dict())
    enable_tiled_mlp(model, 4)
    enable_tiled_mlp(model, 5)
    assert list(model.state_dict()) == names
    mlps = decoder_mlps(model)
    assert len(mlps) == MICRO_SHAPE["num_hidden_layers"]
    assert all(isinstance(m.forward, TiledForward) and m.forward.tiles == 5 for m in mlps)
    first = mlps[0].forward
    assert isinstance(first, TiledForward) and not isinstance(first.forward, TiledForward)


def test_intermediate_tensors_are_tile_sized() -> None:
    model = _model()
    tiles = 5
    enable_tiled_mlp(model, tiles)
    mlp = decoder_mlps(model)[0]
    widest: list[int] = []
    act_fn = mlp.get_submodule("act_fn")
    act = act_fn.forward

    def recorded(x: torch.Tensor) -> torch.Tensor:
        widest.append(x.shape[1])
        return act(x)

    act_fn.forward = recorded
    _step(model)
    assert widest == [LENGTH // tiles] * (2 * tiles)  # forward, then the backward's recompute, one tile at a time


def test_model_without_layers_is_a_user_error() -> None:
    with pytest.raises(UserError, match="train.tiled_mlp"):
        enable_tiled_mlp(torch.nn.Linear(4, 4), 2)
