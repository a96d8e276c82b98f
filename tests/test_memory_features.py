"""``enable_memory_features``: what a recipe's ``train`` block switches on, and only that."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tests.micro_models import micro_config
from toolkit.memory.checkpointing import decoder_layers
from toolkit.memory.features import enable_memory_features
from toolkit.memory.lean_norm import LeanNormForward
from toolkit.memory.tiled_mlp import TiledForward, decoder_mlps
from toolkit.recipe.schema import StageSpec, TrainSpec

STAGES = [StageSpec(seq_len=64, max_steps=1)]


def _switched_on(model: LlamaForCausalLM) -> tuple[bool, bool, bool]:
    """(checkpointed, tiled, lean norms)."""
    norms = [module for module in model.modules() if isinstance(module, LlamaRMSNorm)]
    return (model.is_gradient_checkpointing, all(isinstance(mlp.forward, TiledForward) for mlp in decoder_mlps(model)),
            all(isinstance(norm.forward, LeanNormForward) for norm in norms))


def test_every_feature_the_train_block_asks_for() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(micro_config(num_hidden_layers=2))
    train = TrainSpec(stages=STAGES, gradient_checkpointing=True, activation_offload=1,
                      activation_offload_dtype="fp8", tiled_mlp=2)
    store = enable_memory_features(model, train)
    assert store is not None and store.fp8
    assert [layer._gradient_checkpointing_func == store.checkpoint for layer in decoder_layers(model)] == [True, False]
    assert _switched_on(model) == (True, True, True)


def test_only_what_it_asks_for() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(micro_config(num_hidden_layers=2))
    assert enable_memory_features(model, TrainSpec(stages=STAGES, lean_rmsnorm=False)) is None
    assert _switched_on(model) == (False, False, False)
    assert enable_memory_features(model, TrainSpec(stages=STAGES, gradient_checkpointing=True)) is None  # no offload
    assert _switched_on(model) == (True, False, True)
