"""The recipe checked against its model before the weights load, on the model's structure (meta device, no weights
read): every stage's RoPE, LoRA's module names, the attention kernel under sequence parallelism, and the evaluations
``eval.verdict`` reads at the model's native length. A mistake there costs seconds, not the minutes an 8B model takes
to load."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from toolkit.model.attention import AttentionChoice, select_attention
from toolkit.model.loading import model_structure
from toolkit.model.lora import check_lora_names
from toolkit.model.precision import resolve_dtype
from toolkit.model.rope import check_coverage
from toolkit.model.rope_methods import native_length_of
from toolkit.parallel.engines import built_whole
from toolkit.parallel.sequence import ring_attention, use_model_attention
from toolkit.recipe.loading import check_verdict_at_native
from toolkit.recipe.schema import Recipe


def check_model_fit(recipe: Recipe, accelerator: Any, config: PretrainedConfig) -> AttentionChoice:
    """The attention kernel the run loads the model with; a :class:`~toolkit.errors.UserError`, naming the field,
    where the recipe does not fit its model (``config``: :func:`~toolkit.model.loading.recipe_config`). DeepSpeed's
    Ulysses wrapper is told the kernel here, for its check, and again once the model has loaded."""
    with built_whole(accelerator):
        structure = model_structure(recipe.model, config)
    native = native_length_of(structure.config)
    check_coverage(recipe.train, native, structure.config)
    check_verdict_at_native(recipe, native)
    if recipe.method.kind == "lora":
        check_lora_names(structure, recipe.method.lora)
    dtype = resolve_dtype(recipe.model.precision, accelerator.device)
    attention = select_attention(recipe.model.attention, accelerator.device, dtype,
                                 context_parallel=ring_attention(accelerator))
    use_model_attention(accelerator, attention.implementation, recipe.train.packed_field())
    return attention
