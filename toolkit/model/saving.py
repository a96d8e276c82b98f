"""Write a run's ``final/`` folder atomically: full weights, or a LoRA adapter that loads on its own.

A LoRA ``final/`` holds the adapter (with any ``modules_to_save``), the tokenizer, the base config with the
trained RoPE as ``config.json``, the base weights in ``base/`` when the base was built from ``init_config``
(nothing else could recreate them), and merged full weights in ``merged/`` when asked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from toolkit.errors import UserError
from toolkit.file_reading import read_json_object
from toolkit.model.eval_copy import tied_names
from toolkit.model.loading import load_merged, lora_sources
from toolkit.model.lora import CausalLM, unwrap_peft
from toolkit.model.sources import has_tokenizer
from toolkit.output_paths import atomic_dir, write_text
from toolkit.recipe.schema import MethodSpec
from toolkit.run_folder import ADAPTER_CONFIG, BASE_FOLDER, MERGED_FOLDER, MERGED_MARKER, is_adapter_folder


def base_state_dict(peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The untouched base weights in a peft model's state dict, under the plain model's names.

    Drops the LoRA tensors and the trained copies of ``modules_to_save``, and undoes peft's names
    (``base_model.model.x.base_layer.weight`` and ``base_model.model.x.original_module.weight`` -> ``x.weight``).
    """
    state = {}
    for key, tensor in peft_state.items():
        if ".lora_" in key or ".modules_to_save." in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        state[name] = tensor
    return state


def save_final(model: CausalLM, tokenizer, out_dir: Path, method: MethodSpec, base_is_local_init: bool = False,
               state_dict: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write ``out_dir`` (full model, or LoRA adapter + base config [+ base/] [+ merged/]) and the tokenizer.

    ``model`` is the unwrapped training model (plain, or the peft model for LoRA); it is not modified.
    ``state_dict`` is its full state gathered from sharded weights (FSDP, DeepSpeed ZeRO-3), when sharded.
    ``dtype`` (the recipe's precision) is the one floating-point weights are saved in and every config.json
    records, whatever the training weights' (FSDP2 keeps trainable ones in float32); by default, theirs.
    """
    state = _tied_as_one(model, model.state_dict() if state_dict is None else state_dict)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        if method.kind == "full":
            _save_model(unwrap_peft(model), tmp, state, dtype)
            return
        if not isinstance(model, PeftModel):
            raise TypeError(f"a LoRA run saves its peft model, not a {type(model).__name__}")
        model.save_pretrained(str(tmp), state_dict=_in_dtype(state, dtype))
        base = unwrap_peft(model)
        _config_in(base.config, dtype).save_pretrained(tmp)
        if base_is_local_init:
            _save_model(base, tmp / BASE_FOLDER, base_state_dict(state), dtype)
        if method.merge_on_save:
            merge_adapter(tmp, tmp / MERGED_FOLDER)


def _save_model(model: PreTrainedModel, folder: Path, state: dict[str, torch.Tensor],
                dtype: torch.dtype | None) -> None:
    """``model.save_pretrained`` with ``state`` in ``dtype``; transformers records the parameters' dtype in
    ``model.config``, so the dtype that was there is put back and config.json rewritten with ``dtype``."""
    recorded = model.config.dtype
    model.save_pretrained(str(folder), state_dict=_in_dtype(state, dtype))
    if dtype is not None:
        model.config.dtype = recorded
        _config_in(model.config, dtype).save_pretrained(folder)


def _tied_as_one(model: CausalLM, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a tied weight's names holding one tensor (a gather may copy it per name), so that it is cast
    once and transformers saves it once."""
    state = dict(state)
    for names in tied_names(model):
        given = [state[name] for name in names if name in state]
        state.update({name: given[0] for name in names if given and name in state})
    return state


def _in_dtype(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors in ``dtype``; a tensor held under several names is cast once."""
    if dtype is None:
        return state
    cast: dict[int, torch.Tensor] = {}
    for tensor in state.values():
        if tensor.is_floating_point() and id(tensor) not in cast:
            cast[id(tensor)] = tensor.to(dtype)
    return {key: cast.get(id(tensor), tensor) for key, tensor in state.items()}


def _config_in(config: PretrainedConfig, dtype: torch.dtype | None) -> PretrainedConfig:
    """``config``, or a copy of it that records ``dtype``."""
    if dtype is None:
        return config
    copied = copy.deepcopy(config)
    copied.dtype = dtype
    return copied


def merge_adapter(final_dir: Path, out_dir: Path) -> None:
    """Merge a LoRA ``final/`` folder's adapter into its base and save full weights + tokenizer to ``out_dir``.

    Works on CPU in the saved dtype, from the files alone, so the training model is never touched.
    """
    final_dir = Path(final_dir)
    if not is_adapter_folder(final_dir):
        raise UserError(f"{final_dir}: not a LoRA folder (no adapter_config.json)")
    base, adapter = lora_sources(str(final_dir), None)
    merged = load_merged(base, adapter, field=f"{final_dir}/adapter_config.json base_model_name_or_path",
                         dtype="auto")
    named_base = read_json_object(final_dir / ADAPTER_CONFIG).get("base_model_name_or_path")
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        if has_tokenizer(final_dir):
            AutoTokenizer.from_pretrained(final_dir).save_pretrained(tmp)
        write_text(tmp / MERGED_MARKER, json.dumps({"base_model_name_or_path": named_base}) + "\n")
