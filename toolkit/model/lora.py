"""LoRA through peft, with LongLoRA's trick of training embeddings and norms fully beside the adapter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias, cast

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from toolkit.errors import UserError
from toolkit.recipe.schema import LoraSpec

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


def check_lora_names(model: nn.Module, spec: LoraSpec) -> None:
    """Every name in ``target_modules`` and ``trainable_modules`` must match a module of ``model`` (its structure on the
    meta device is enough) the way peft matches: the module path ends with it."""
    paths = [path for path, _ in model.named_modules()]
    for field in ("target_modules", "trainable_modules"):
        for name in getattr(spec, field):
            if not any(path.endswith(name) for path in paths):
                raise UserError(f"method.lora.{field}: no module of {type(model).__name__} ends with {name!r}")


def peft_settings(spec: LoraSpec) -> dict[str, Any]:
    """``method.lora`` as peft's keyword arguments (``LoraConfig``'s, and unsloth's ``get_peft_model``'s). peft
    annotates ``lora_alpha`` as int, but scales by ``lora_alpha / r``: a float alpha works."""
    return {"r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": list(spec.target_modules), "modules_to_save": list(spec.trainable_modules) or None}


def apply_lora(model: nn.Module, spec: LoraSpec, revision: str | None = None) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter; ``spec.trainable_modules`` are trained fully and saved with it. The base's
    ``revision`` (``model.revision``) goes into ``adapter_config.json``, so merging and evaluating load that base.

    The adapters are held in float32 (peft's ``autocast_adapter_dtype``), so updates far below a bf16 ulp add up, and
    computed in the model's dtype: training runs under bf16 autocast (``toolkit.training.loop.train_step``, in the
    mixed precision ``toolkit.training.session`` sets), and peft's cast of each adapted layer's input to float32, a
    hidden full-size copy per layer, is switched off (:func:`adapter_inputs_cast` switches it on where no autocast
    runs, in evaluation).

    peft matches ``modules_to_save`` by suffix of the module path, so ``norm`` selects the final norm and
    every ``input_layernorm`` / ``post_attention_layernorm`` as well, and ``embed_tokens`` the embeddings.
    """
    check_lora_names(model, spec)
    peft_model = get_peft_model(model, LoraConfig(**peft_settings(spec), task_type="CAUSAL_LM", revision=revision))
    _cast_adapter_inputs(peft_model, False)
    trainable, total = count_parameters(peft_model)
    log.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return peft_model


def _cast_adapter_inputs(model: nn.Module, enabled: bool) -> dict[nn.Module, bool]:
    """Switch peft's cast of LoRA layers' inputs to the adapters' dtype; returns each layer's setting before."""
    before: dict[nn.Module, bool] = {}
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            layer = cast(Any, module)  # a flag peft reads, undeclared on the class
            before[module], layer.cast_input_dtype_enabled = getattr(layer, "cast_input_dtype_enabled", True), enabled
    return before


@contextmanager
def adapter_inputs_cast(model: nn.Module) -> Iterator[None]:
    """Within the block, LoRA layers cast their input to the adapters' float32, as peft does by default: a bf16 model
    with float32 adapters then runs without autocast (evaluation). Each layer's setting is restored after."""
    before = _cast_adapter_inputs(model, True)
    try:
        yield
    finally:
        for module, enabled in before.items():
            cast(Any, module).cast_input_dtype_enabled = enabled
