"""``python -m toolkit merge RUN``: fold a LoRA run's adapter into full weights (``RUN/final/merged``).

The merging itself is :func:`toolkit.model.saving.merge_adapter` (the same code ``method.merge_on_save`` uses):
base from ``final/base/`` or the adapter's ``base_model_name_or_path``, ``config.json`` with the trained RoPE,
peft ``merge_and_unload``, written atomically. The result loads with plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import UserError
from toolkit.model.saving import MERGED_FOLDER, merge_adapter
from toolkit.run_folder import FINAL


def merge_run(run_dir: Path, out: Path | None) -> Path:
    """Merge the adapter of ``run_dir`` into full weights at ``out`` (default ``RUN/final/merged``); return it."""
    final = run_dir / FINAL
    if not final.is_dir():
        raise UserError(f"{final}: not found; the run has no final model yet (train it to the end first)")
    if not (final / "adapter_config.json").is_file():
        raise UserError(f"nothing to merge: {run_dir} is not a LoRA run (no final/adapter_config.json)")
    target = out if out is not None else final / MERGED_FOLDER
    merge_adapter(final, target)
    print(f"merged {final} into {target}")
    return target
