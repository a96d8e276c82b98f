"""Shared fixtures: a micro recipe that trains in seconds on CPU."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import yaml

if TYPE_CHECKING:
    from tests.fake_hub import FakeHub

torch.set_num_threads(2)

MICRO_SHAPE: dict[str, int] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2}
"""The micro Llama's sizes (2 layers, 64 wide, 4 query and 2 KV heads): the micro recipe's and the test models'."""

MICRO_RECIPE: dict[str, Any] = {
    "name": "micro",
    "seed": 0,
    "model": {
        "init_config": {**MICRO_SHAPE, "max_position_embeddings": 64,
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


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro recipe trained in one go, saving every 2 steps: the reference for resume tests (read, never
    changed)."""
    from tests.runs import train

    folder = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(folder, dict(MICRO_RECIPE, output={"dir": str(folder / "run")}))
    assert train(recipe, "train.save_every=2") == 0
    return folder / "run"


@pytest.fixture(scope="session")
def export_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export tests' micro run (``tests.test_export_gguf.micro_run``: YaRN x4 past its native 64 tokens), trained
    once for every file that exports or evaluates it; they write their files elsewhere, or beside it (:func:`micro_gguf`
    its f32 file)."""
    from tests.test_export_gguf import micro_run

    return micro_run(tmp_path_factory.mktemp("export-run"))


@dataclass(frozen=True)
class CliExport:
    """One ``python -m toolkit export --format gguf`` of :func:`export_run`: the file, and what the command printed."""

    path: Path
    out: str
    err: str


@pytest.fixture(scope="session")
def micro_gguf(export_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], CliExport]:
    """:func:`export_run` exported by the CLI once per outtype (a conversion takes seconds), for every test that
    reads the file: f32 beside the run (no ``--out``), the others each into a folder of their own (``--out FOLDER``)."""
    from toolkit.cli import main

    done: dict[str, CliExport] = {}

    def exported(outtype: str) -> CliExport:
        if outtype not in done:
            folder = export_run if outtype == "f32" else tmp_path_factory.mktemp(f"gguf-{outtype}")
            out = [] if outtype == "f32" else ["--out", str(folder)]
            with redirect_stdout(io.StringIO()) as printed, redirect_stderr(io.StringIO()) as said:
                assert main(["export", str(export_run), "--format", "gguf", "--outtype", outtype, *out]) == 0
            done[outtype] = CliExport(folder / f"run-{outtype}.gguf", printed.getvalue(), said.getvalue())
        return done[outtype]

    return exported


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A running local stand-in of the Hub (``tests/fake_hub.py``); huggingface_hub points at it."""
    from tests.fake_hub import serving

    with serving(monkeypatch, tmp_path) as hub:
        yield hub


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``gpu`` is skipped where no CUDA or ROCm device is present (``pytest -m gpu`` on CPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA or ROCm device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
