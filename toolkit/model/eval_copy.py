"""A whole, ordinary copy of a sharded training model to evaluate, built from its gathered state dict.

Under FSDP2 or DeepSpeed ZeRO-3 no process holds the whole model: every process gathers the full state dict and
the main process evaluates this copy. The copy is built from the model's class and configs alone, on the meta
device, so the training model's sharded (or empty placeholder) parameters are never read.
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from torch import nn

from toolkit.model.lora import CausalLM, unwrap_peft
from toolkit.model.rope import rebuild_rotary


def eval_copy(model: CausalLM, state_dict: dict[str, torch.Tensor], device: torch.device,
              dtype: torch.dtype) -> CausalLM:
    """A fresh model of ``model``'s structure holding copies of ``state_dict``'s tensors on ``device`` (floating
    ones in ``dtype``), in eval mode and without gradients; ``model`` and ``state_dict`` are not modified.

    ``state_dict`` has the keys of ``model.state_dict()``; weights the config ties may be given under one of their
    names only. Raises ``ValueError`` when a key is missing or unknown.
    """
    fresh = _structure(model, dtype)
    tensors = {key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype, copy=True)
               for key, value in state_dict.items()}
    tied = tied_names(fresh)
    for names in tied:
        given = [tensors[name] for name in names if name in tensors]
        tensors.update({name: given[0] for name in names if given and name not in tensors})
    result = fresh.load_state_dict(tensors, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"state dict does not fit {type(model).__name__}: missing {result.missing_keys[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    for names in tied:
        _set_parameter(fresh, names[1:], fresh.get_parameter(names[0]))
    base = unwrap_peft(fresh)
    rebuild_rotary(base, base.config, torch.device(device))
    if left := [name for name, buffer in base.named_buffers() if buffer.is_meta]:
        raise ValueError(f"{type(base).__name__}: no way to compute the buffers {left[:3]}")
    return fresh.requires_grad_(False).eval()


def _structure(model: CausalLM, dtype: torch.dtype) -> CausalLM:
    """``model``'s structure on the meta device from a copy of its config, peft-wrapped as ``model`` is.

    The class is called directly: ``_from_config`` would partition the copy under ZeRO-3 (``deepspeed.zero.Init``).
    """
    base = unwrap_peft(model)
    config = copy.deepcopy(base.config)
    config.dtype = dtype
    with torch.device("meta"):
        fresh = type(base)(config)
    if not isinstance(model, PeftModel):
        return fresh
    name = model.active_adapter
    return type(model)(fresh, copy.deepcopy(model.peft_config[name]), adapter_name=name, autocast_adapter_dtype=False,
                       low_cpu_mem_usage=True)


def tied_names(model: nn.Module) -> list[list[str]]:
    """The names of each parameter held under several names (the tied embeddings)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _set_parameter(model: nn.Module, names: list[str], parameter: nn.Parameter) -> None:
    for name in names:
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, parameter)
