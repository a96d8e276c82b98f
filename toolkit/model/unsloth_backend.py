"""``model.backend: unsloth``: load through unsloth's FastLanguageModel (CUDA GPUs only, optional extra).

Untested here (unsloth imports only with a GPU); RoPE is still set by ``toolkit.model.rope`` per stage, so unsloth is
given the checkpoint's own ``max_position_embeddings`` as ``max_seq_length`` (unsloth scales RoPE itself only past
it) and applies no RoPE scaling of its own.
"""

from __future__ import annotations

import torch

from toolkit.errors import UserError
from toolkit.model.loading import model_config
from toolkit.model.lora import CausalLM, peft_settings
from toolkit.recipe.schema import MethodSpec, ModelSpec


def load_with_unsloth(spec: ModelSpec, method: MethodSpec, device: torch.device, dtype: torch.dtype,
                      seed: int) -> CausalLM:
    """FastLanguageModel weights, LoRA-wrapped with unsloth's gradient checkpointing for ``method.kind: lora``."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise UserError(f"model.backend: unsloth needs a CUDA GPU, the device is {device.type} "
                        "(use backend: transformers)")
    if spec.name_or_path is None:
        raise UserError("model.backend: unsloth loads model.name_or_path checkpoints, not init_config")
    try:
        from unsloth import FastLanguageModel
    except ImportError:
        raise UserError("model.backend: unsloth is not installed (pip install unsloth)") from None
    config = model_config(spec)
    model, _ = FastLanguageModel.from_pretrained(
        model_name=spec.name_or_path, max_seq_length=config.max_position_embeddings, dtype=dtype,
        load_in_4bit=False, full_finetuning=method.kind == "full", revision=spec.revision,
        trust_remote_code=spec.trust_remote_code)
    if method.kind != "lora":
        return model
    return FastLanguageModel.get_peft_model(model, **peft_settings(method.lora), bias="none",
                                            use_gradient_checkpointing="unsloth", random_state=seed)
