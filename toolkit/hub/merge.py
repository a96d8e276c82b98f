"""``python -m toolkit merge RUN``: fold a LoRA run's adapter into full weights (``RUN/final/merged``).

The merging itself is :func:`toolkit.model.saving.merge_adapter` (the same code ``method.merge_on_save`` uses):
base from ``final/base/`` or the adapter's ``base_model_name_or_path``, ``config.json`` with the trained RoPE,
peft ``merge_and_unload``, written atomically. The result loads with plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import UserError
from toolkit.model.loading import lora_sources
from toolkit.model.saving import merge_adapter
from toolkit.output_paths import check_writable
from toolkit.run_folder import FINAL, MERGED_FOLDER, MERGED_MARKER, RECIPE, is_adapter_folder, require_final


def merge_run(run_dir: Path, out: Path | None) -> Path:
    """Merge the adapter of ``run_dir`` into full weights at ``out`` (default ``RUN/final/merged``); return it."""
    final = require_final(run_dir)
    if not is_adapter_folder(final):
        raise UserError(f"nothing to merge: {run_dir} is not a LoRA run (no final/adapter_config.json)")
    target = out if out is not None else final / MERGED_FOLDER  # the run's own, replaced by every merge
    if out is not None:
        _check_target(out, final)
    else:
        check_writable(final, "RUN")
    merge_adapter(final, target)
    print(f"merged {final} into {target}")
    return target


def _check_target(target: Path, final: Path) -> None:
    """A UserError unless ``target`` can be written and replaced: new, an empty folder, or an earlier merge's folder
    (it holds ``merged_from.json``) other than the adapter's base: the merge replaces the whole folder, so what is
    there would be lost."""
    check_writable(target.parent, "--out")
    if target.exists() and not target.is_dir():
        raise UserError(f"--out: {target} is a file; name a folder for the merged model")
    if target.name == FINAL and (target.parent / RECIPE).is_file():
        raise UserError(f"--out: {target} is a run's final model; name a new folder for the merged model")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / MERGED_MARKER).is_file():
        raise UserError(f"--out: {target} holds files and is no earlier merge (no {MERGED_MARKER}); the merge "
                        "replaces the folder, so name a new one")
    base = Path(lora_sources(str(final), None)[0])
    if base.exists() and target.resolve() == base.resolve():  # an earlier merge the adapter was trained on
        raise UserError(f"--out: {target} is the base model of the adapter; name a new folder")
