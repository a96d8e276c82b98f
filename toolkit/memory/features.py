"""The memory features a recipe's ``train`` block switches on, applied to a model in one place: training and the
longest-context probe (``benchmarks/context_probe.py``) measure the same model."""

from __future__ import annotations

from toolkit.memory.checkpointing import enable_checkpointing
from toolkit.memory.lean_norm import enable_lean_rmsnorm
from toolkit.memory.offload import OffloadStore
from toolkit.memory.tiled_mlp import enable_tiled_mlp
from toolkit.model.lora import CausalLM
from toolkit.recipe.schema import TrainSpec


def enable_memory_features(model: CausalLM, train: TrainSpec) -> OffloadStore | None:
    """Switch on in ``model`` what ``train`` asks: gradient checkpointing (with ``activation_offload``, those layers'
    inputs kept in host memory, as fp8 with ``activation_offload_dtype``), the tiled MLP and the lean RMSNorm.
    Returns the store of the offloaded inputs, None without offload."""
    store = None
    if train.gradient_checkpointing:
        store = enable_checkpointing(model, offload=train.activation_offload,
                                     fp8=train.activation_offload_dtype == "fp8")
    if train.tiled_mlp:
        enable_tiled_mlp(model, train.tiled_mlp)
    if train.lean_rmsnorm:
        enable_lean_rmsnorm(model)
    return store
