"""Write a run's ``final/`` folder atomically: full weights, or a LoRA adapter that loads on its own.

A LoRA ``final/`` holds the adapter (with any ``modules_to_save``), the tokenizer, the base config with the
trained RoPE as ``config.json``, the base weights in ``base/`` when the base was built from ``init_config``
(nothing else could recreate them), and merged full weights in ``merged/`` when asked.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer

from toolkit.errors import UserError
from toolkit.lora import CausalLM, unwrap_peft
from toolkit.modeling import BASE_FOLDER, has_tokenizer, load_merged, lora_sources
from toolkit.schema import MethodSpec

MERGED_FOLDER = "merged"


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a sibling temporary folder that replaces ``out_dir`` only once the block has finished."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def base_state_dict(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The untouched base weights inside a peft model, under the plain model's names.

    Drops the LoRA tensors and the trained copies of ``modules_to_save``, and undoes peft's wrapper names
    (``x.base_layer.weight`` and ``x.original_module.weight`` -> ``x.weight``).
    """
    state = {}
    for key, tensor in peft_model.get_base_model().state_dict().items():
        if ".lora_" in key or ".modules_to_save." in key:
            continue
        state[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    return state


def save_final(model: CausalLM, tokenizer, out_dir: Path, method: MethodSpec,
               base_is_local_init: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``out_dir`` (full model, or LoRA adapter + base config [+ base/] [+ merged/]) and the tokenizer.

    ``model`` is the unwrapped training model (plain, or the peft model for LoRA); it is not modified.
    ``state_dict`` is its full state gathered from sharded weights (FSDP, DeepSpeed ZeRO-3), when sharded.
    """
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        if method.kind == "full":
            model.save_pretrained(str(tmp), state_dict=state_dict)
            return
        if not isinstance(model, PeftModel):
            raise TypeError(f"a LoRA run saves its peft model, not a {type(model).__name__}")
        model.save_pretrained(str(tmp), state_dict=state_dict)
        base = unwrap_peft(model)
        base.config.save_pretrained(tmp)
        if base_is_local_init:
            base.save_pretrained(tmp / BASE_FOLDER, state_dict=base_state_dict(model))
        if method.merge_on_save:
            merge_adapter(tmp, tmp / MERGED_FOLDER)


def merge_adapter(final_dir: Path, out_dir: Path) -> None:
    """Merge a LoRA ``final/`` folder's adapter into its base and save full weights + tokenizer to ``out_dir``.

    Works on CPU in the saved dtype, from the files alone, so the training model is never touched.
    """
    final_dir = Path(final_dir)
    if not (final_dir / "adapter_config.json").is_file():
        raise UserError(f"{final_dir}: not a LoRA folder (no adapter_config.json)")
    base, adapter = lora_sources(str(final_dir), None)
    merged = load_merged(base, adapter, field=f"{final_dir}/adapter_config.json base_model_name_or_path",
                         dtype="auto")
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        if has_tokenizer(final_dir):
            AutoTokenizer.from_pretrained(final_dir).save_pretrained(tmp)
