"""Where a model and its tokenizer are found, checked without loading either and without importing transformers (so
``validate`` stays quick): a hub id passes as it is, a local folder must hold what transformers will read; and which
model a source holds (:func:`base_identity`), which a resumed run checks against its checkpoint's."""

from __future__ import annotations

import hashlib
import json
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


WEIGHT_FORMATS = ("safetensors", "bin")
"""A model folder's weight files by suffix, in the order transformers prefers them: where both are there it loads the
first (a hub snapshot may hold both), and :func:`folder_digest` reads only those."""

WEIGHT_INDEXES = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
SINGLE_WEIGHTS = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}


def _weights(folder: Path) -> list[Path]:
    """The weight files transformers loads from ``folder``: those of the first of :data:`WEIGHT_FORMATS` it holds."""
    for suffix in WEIGHT_FORMATS:
        files = sorted(path for path in folder.glob(f"*.{suffix}") if path.is_file())
        if files:
            return files
    return []


def folder_digest(folder: Path) -> str:
    """A short sha256 over ``folder``'s config.json and the names and byte sizes of the weight files transformers loads
    from it (not their bytes: gigabytes): the same for a copy elsewhere; another once config.json is edited or a
    weight file added, removed or replaced by one of another size."""
    weights = [(path.name, path.stat().st_size) for path in _weights(folder)]
    digest = hashlib.sha256((folder / MODEL_CONFIG).read_bytes())
    digest.update(json.dumps(weights).encode())
    return digest.hexdigest()[:16]


def _complete(folder: Path) -> bool:
    """Whether a cached snapshot holds every weight file of its format (its index's, or the single file): a download
    cut short leaves the files it finished, whose digest would name another model."""
    for suffix in WEIGHT_FORMATS:
        index = folder / WEIGHT_INDEXES[suffix]
        if index.is_file():
            try:
                needed = set(json.loads(index.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                return False
            return bool(needed) and all((folder / name).is_file() for name in needed)
        if (folder / SINGLE_WEIGHTS[suffix]).is_file():
            return True
    return False


def base_identity(spec: ModelSpec) -> str | None:
    """Which model ``model.name_or_path`` holds, read without loading it: ``sha256 <digest>`` (:func:`folder_digest`)
    of a local folder, or of a hub id's snapshot at ``model.revision`` in the Hugging Face cache (read offline; None
    while it is not there); None for a random init (``model.init_config``, which the run's record holds)."""
    source = spec.name_or_path
    if source is None:
        return None
    if looks_local(source):
        check_model_source(source, "model.name_or_path")
        folder: Path | None = Path(os.path.expanduser(source))
    else:
        folder = _cached_snapshot(source, spec.revision)
    return None if folder is None else f"sha256 {folder_digest(folder)}"


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of ``repo_id``'s snapshot at ``revision`` (its main branch by default) in the Hugging Face cache
    (``snapshots/<commit>``), None while it is not there whole (:func:`_complete`)."""
    from huggingface_hub import try_to_load_from_cache  # here: validate imports no hub client for a local model

    found = try_to_load_from_cache(repo_id, MODEL_CONFIG, revision=revision)
    folder = Path(found).parent if isinstance(found, str) else None
    return folder if folder is not None and _complete(folder) else None


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
