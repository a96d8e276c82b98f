"""Shared fixtures: a micro recipe that trains in seconds on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(2)

MICRO_RECIPE = {
    "name": "micro",
    "seed": 0,
    "model": {
        "init_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        "train_tokenizer": {"vocab_size": 320, "corpus_documents": 200},
        "precision": "fp32",
    },
    "train": {
        "data": {"source": "synthetic", "task": "passkey", "loss_on": "all"},
        "loss_chunk_size": 48,
        "stages": [
            {"name": "short", "seq_len": 64, "max_steps": 6, "lr": 3e-3, "batch_size": 4, "warmup_steps": 1},
            {"name": "long", "seq_len": 128, "max_steps": 4, "lr": 1e-3, "batch_size": 2, "grad_accum": 2,
             "rope": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}},
        ],
    },
    "logging": {"every": 1},
}


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def micro_recipe(tmp_path: Path) -> Path:
    recipe = dict(MICRO_RECIPE, output={"dir": str(tmp_path / "run")})
    return write_recipe(tmp_path, recipe)
