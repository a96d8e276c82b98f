"""A model folder seen with another ``config.json``: its other files linked, not copied (the GGUF converter's input
with llama.cpp's RoPE settings, the GPU demo's model declared native at a shorter length)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.run_folder import MODEL_CONFIG


def with_config(source: Path, out: Path, config: dict[str, Any]) -> Path:
    """``out`` (made if missing) holding links to ``source``'s files, and ``config`` as its ``config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != MODEL_CONFIG and not (out / item.name).exists():
            (out / item.name).symlink_to(item.resolve())
    (out / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
