"""A run folder read for the report, the verdict and the model card: besides the fields every task type shares
(:func:`toolkit.run_folder.read_suite`), each results entry holds its type's (``TaskType.entry``), so a hand-edited
file is a UserError naming the file, the task and the field rather than a traceback in a section. An entry of a type
nobody registered is kept with the shared fields only (the report shows its score); an entry cut short (``complete:
false``) may lack its type's fields, but those it holds are of their types.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from toolkit.evals.registry import TASK_TYPES
from toolkit.run_folder import Run, checked, load_run


@cache
def _shape(entry: type) -> TypeAdapter[Any]:
    return TypeAdapter(entry)


def check_entries(path: Path, data: dict[str, Any]) -> None:
    """Every task of the results file ``path`` (its JSON ``data``) against its type's shape."""
    for key, entry in data["tasks"].items():
        kind = TASK_TYPES.get(entry["type"])
        if kind is not None and kind.entry is not None:
            checked(_shape(kind.entry), entry, str(path), ("tasks", key), partial=entry.get("complete") is False)


def read_run(folder: Path, info_required: bool = False) -> Run:
    """:func:`toolkit.run_folder.load_run` with every results entry checked (:func:`check_entries`)."""
    return load_run(folder, info_required, check_entries)
