"""Activation (gradient) checkpointing of every decoder layer, optionally with the saved inputs in host memory.

Uses transformers' public ``gradient_checkpointing_enable``: each decoder layer keeps only its input and
recomputes its activations in the backward (non-reentrant ``torch.utils.checkpoint``). With ``offload`` the
kept layer inputs (``layers x batch x seq_len x hidden``, the memory that dominates at long lengths once
layers are checkpointed) move to pinned host memory (``torch.autograd.graph.save_on_cpu``) and come back for
the recompute. Works on peft-wrapped models: attribute access falls through to the transformers model, whose
``gradient_checkpointing_enable`` also makes the input embeddings' output require grad (adapters below frozen
layers keep their gradients).
"""

from __future__ import annotations

import torch

from toolkit.model.lora import CausalLM


def enable_checkpointing(model: CausalLM, offload: bool) -> None:
    """Checkpoint every decoder layer of ``model`` (a transformers or peft model); ``offload`` keeps the saved
    layer inputs in CPU memory. Without an accelerator the activations already live in host memory, so offload
    changes nothing there (and pinned memory does not exist)."""
    has_accelerator = torch.accelerator.current_accelerator() is not None
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False},
                                        offload=offload and has_accelerator)
