"""Where a model and its tokenizer are found, checked without loading either and without importing transformers (so
``validate`` stays quick): a hub id passes as it is, a local folder must hold what transformers will read."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import UserError
from toolkit.file_reading import read_json_object
from toolkit.hub.ids import looks_local
from toolkit.recipe.schema import ModelSpec
from toolkit.run_folder import FINAL, MODEL_CONFIG

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""A saved tokenizer holds one of these (transformers' fast, its settings, sentencepiece's, BPE's vocabulary)."""
NO_TOKENIZER = f"no tokenizer in it (none of {', '.join(TOKENIZER_FILES)})"
"""What is said of a folder that holds none of them, after ``cannot load '<folder>'``."""


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a saved tokenizer (one of :data:`TOKENIZER_FILES`)."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def check_tokenizer_folder(source: str, field: str) -> None:
    """A UserError naming ``field`` when ``source`` is a local folder that holds no saved tokenizer (transformers'
    own error then says it cannot instantiate a backend tokenizer, naming no file)."""
    folder = Path(os.path.expanduser(source))
    if looks_local(source) and folder.is_dir() and not has_tokenizer(folder):
        raise UserError(f"{field}: cannot load {source!r}: {NO_TOKENIZER}")


def check_model_source(source: str, field: str) -> None:
    """A UserError naming ``field`` unless ``source`` is a hub id or a folder with ``config.json``."""
    if not looks_local(source):
        return
    folder = Path(os.path.expanduser(source))
    if folder.is_file():
        raise UserError(f"{field}: {source} is a file; name a model folder (with {MODEL_CONFIG}) or a hub id")
    if not folder.is_dir():
        raise UserError(f"{field}: no such folder, and not a hub id: {source}")
    if not (folder / MODEL_CONFIG).is_file():
        run = f" (a run folder? its model is {folder / FINAL})" if (folder / FINAL / MODEL_CONFIG).is_file() else ""
        raise UserError(f"{field}: {source} is no model folder: it holds no {MODEL_CONFIG}{run}")
    read_json_object(folder / MODEL_CONFIG)  # a JSON object, or one line naming the file


def tokenizer_origin(spec: ModelSpec) -> str:
    """Said after the tokenizer's source in an error: where it came from when ``model.tokenizer`` is not set."""
    return "" if spec.tokenizer else " (from model.name_or_path)"


def tokenizer_source(spec: ModelSpec) -> str | None:
    """Where the run's tokenizer loads from (``model.tokenizer``, else ``model.name_or_path``), read without loading
    it (``validate`` checks it so): a hub id as it is, or a local folder, expanded, once it is checked to hold a
    saved tokenizer (a UserError naming ``model.tokenizer`` otherwise); None when ``model.train_tokenizer`` makes
    it."""
    if spec.train_tokenizer is not None:
        return None
    source = spec.tokenizer or spec.name_or_path
    assert source is not None  # the schema: a model without name_or_path has tokenizer or train_tokenizer
    if not looks_local(source):
        return source
    folder = Path(os.path.expanduser(source))
    if not folder.is_dir():
        raise UserError(f"model.tokenizer: no such folder: {source}{tokenizer_origin(spec)}")
    if (folder / MODEL_CONFIG).is_file():
        read_json_object(folder / MODEL_CONFIG)  # which AutoTokenizer reads: a JSON object
    if not has_tokenizer(folder):
        raise UserError(f"model.tokenizer: cannot load {str(folder)!r}{tokenizer_origin(spec)}: {NO_TOKENIZER}")
    return str(folder)
