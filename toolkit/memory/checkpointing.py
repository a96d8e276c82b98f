"""Activation (gradient) checkpointing of every decoder layer, optionally with some layers' inputs in host memory.

Uses transformers' public ``gradient_checkpointing_enable``: each decoder layer keeps only its input and
recomputes its activations in the backward (non-reentrant ``torch.utils.checkpoint``). Offload moves the kept
inputs of the first N layers (``batch x seq_len x hidden`` each, the memory that dominates at long lengths once
layers are checkpointed) to pinned host memory through :class:`toolkit.memory.offload.OffloadStore`; the other
layers keep theirs on the GPU. The first layers are the ones offloaded: their inputs are needed last in the
backward, so their copies back have the most time. Works on peft-wrapped models: attribute access falls through to
the transformers model, whose ``gradient_checkpointing_enable`` also makes the input embeddings' output require
grad (adapters below frozen layers keep their gradients).
"""

from __future__ import annotations

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from toolkit.memory.offload import OffloadStore, offloaded_layers
from toolkit.model.lora import CausalLM


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model`` that transformers checkpoints, in order."""
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def enable_checkpointing(model: CausalLM, offload: bool | int, fp8: bool = False) -> OffloadStore | None:
    """Checkpoint every decoder layer of ``model`` (a transformers or peft model); ``offload`` (true: every layer,
    a number: the first ones) keeps those layers' saved inputs in host memory, as fp8 with ``fp8``. Returns the
    store that holds them, or None without offload."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    count = offloaded_layers(offload, len(layers))
    if count == 0:
        return None
    store = OffloadStore(fp8=fp8)
    for layer in layers[:count]:
        layer._gradient_checkpointing_func = store.checkpoint  # type: ignore[assignment]  # what transformers calls
    return store
