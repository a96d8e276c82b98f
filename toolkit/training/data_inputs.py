"""What each source of a stage reads beside its settings, recorded with the checkpoint's data settings
(``toolkit.training.data_identity``) and compared on resume (:func:`input_change`): its chat template, by the sha256
of its text (a ``.jinja`` file's content), and a local source's files, by name and size in bytes (cheap: no file is
read). A file of the same size whose bytes changed is not seen."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from toolkit.data.formats import named_chat_template
from toolkit.data.local_files import LOCAL_FORMATS, data_files, source_path
from toolkit.recipe.data_spec import SourceSpec
from toolkit.recipe.schema import TrainSpec

Change = tuple[str, str, str, str | None]
"""A change found: the field, its recorded and its present state as a message shows them, and what puts it back
(None: the recorded value)."""


def short_sha256(text: str) -> str:
    """The first 16 hex digits of the sha256 of ``text``: how the data settings' record names a definition."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_inputs(train: TrainSpec, index: int) -> list[dict[str, Any]]:
    """What each source of stage ``index`` reads now, in the order of its sources: the source's ``field``, its
    ``chat_template``'s sha256 where it has one, and a local source's ``files``, each by its path relative to the
    source's ``path`` (the file's name for a file), so that a run folder read on another machine compares alike."""
    return [_source_inputs(spec, field) for field, spec in train.stage_sources(index)]


def _source_inputs(spec: SourceSpec, field: str) -> dict[str, Any]:
    inputs: dict[str, Any] = {"field": field}
    template = named_chat_template(spec, field)
    if template is not None:
        inputs["chat_template"] = short_sha256(template)
    if spec.source in LOCAL_FORMATS:
        inputs["files"] = _file_sizes(spec, field)
    return inputs


def _file_sizes(spec: SourceSpec, field: str) -> dict[str, int]:
    """Each file of a local source by its path relative to ``spec.path`` (its name for one file), with its size."""
    path = Path(os.path.expanduser(source_path(spec)))
    root = path if path.is_dir() else path.parent
    return {str(Path(file).relative_to(root)): Path(file).stat().st_size for file in data_files(spec, field)}


def input_change(recorded: list[dict[str, Any]] | None, now: list[dict[str, Any]], files: bool = True) -> Change | None:
    """The first source whose chat template (with ``files``, or whose files: one added, removed or of another size)
    differs between the ``recorded`` inputs of a stage (:func:`stage_inputs`) and those it reads ``now``; None when
    none does, and where the record lacks them (an older checkpoint, or other sources: its settings say so)."""
    if recorded is None or len(recorded) != len(now):
        return None
    for was, is_now in zip(recorded, now, strict=True):
        field = is_now["field"]
        if "chat_template" in was and was["chat_template"] != is_now.get("chat_template"):
            return (f"{field}.chat_template", f"sha256 {was['chat_template']}", f"sha256 {is_now.get('chat_template')}",
                    "Put the template back as it was")
        if files and "files" in was and "files" in is_now and (name := _changed_file(was["files"], is_now["files"])):
            return (f"{field}.path", _shown(name, was["files"]), _shown(name, is_now["files"]),
                    "Put the source's files back as they were")
    return None


def _changed_file(recorded: dict[str, int], now: dict[str, int]) -> str | None:
    """The first file, by name, added, removed or of another size."""
    return next((name for name in sorted(recorded.keys() | now.keys()) if recorded.get(name) != now.get(name)), None)


def _shown(name: str, sizes: dict[str, int]) -> str:
    return f"{name} of {sizes[name]} bytes" if name in sizes else f"no {name}"
