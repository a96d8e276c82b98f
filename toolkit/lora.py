"""LoRA through peft, with LongLoRA's trick of training embeddings and norms fully beside the adapter."""

from __future__ import annotations

import logging
from typing import TypeAlias, cast

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from toolkit.errors import UserError
from toolkit.schema import LoraSpec

log = logging.getLogger(__name__)

CausalLM: TypeAlias = PreTrainedModel | PeftModel
"""A transformers causal LM, or one wrapped by peft (which forwards what it lacks to the model inside)."""


def unwrap_peft(model: CausalLM) -> PreTrainedModel:
    """The transformers model inside a peft wrapper, or ``model`` itself when it is not wrapped."""
    if isinstance(model, PeftModel):
        return cast(PreTrainedModel, model.get_base_model())  # peft annotates it as a plain nn.Module
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; shared (tied) tensors are counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def _check_names(model: nn.Module, names: list[str], field: str) -> None:
    """Every name must match a module the way peft matches (the module path ends with it)."""
    paths = [path for path, _ in model.named_modules()]
    for name in names:
        if not any(path.endswith(name) for path in paths):
            raise UserError(f"method.lora.{field}: no module of {type(model).__name__} ends with {name!r}")


def apply_lora(model: nn.Module, spec: LoraSpec) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter; ``spec.trainable_modules`` are trained fully and saved with it.

    The adapters take the model's dtype: peft's default (``autocast_adapter_dtype``) keeps them in float32 and
    casts every LoRA layer's input to float32, a hidden full-size copy per layer in a bf16 model.

    peft matches ``modules_to_save`` by suffix of the module path, so ``norm`` selects the final norm and
    every ``input_layernorm`` / ``post_attention_layernorm`` as well, and ``embed_tokens`` the embeddings.
    """
    _check_names(model, spec.target_modules, "target_modules")
    _check_names(model, spec.trainable_modules, "trainable_modules")
    # peft annotates lora_alpha as int, but scales by lora_alpha / r: a float alpha works
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,  # type: ignore[arg-type]
                        target_modules=list(spec.target_modules), modules_to_save=list(spec.trainable_modules) or None,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=False)
    trainable, total = count_parameters(peft_model)
    log.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return peft_model
