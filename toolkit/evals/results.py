"""The results JSON of one suite at one tag, saved after every batch so an interrupted sweep resumes.

Layout (shared with the report; read back, checked, by :func:`toolkit.run_folder.read_suite`): ``{"suite", "tag",
"model", "fingerprint", "tasks": {<key>: {"type", "score", ..., "complete", "identity", "cells"}}}``. Recorded cells are
reused only when the backend's fingerprint (transformers: weights sample + RoPE config; llama.cpp: the GGUF file's hash)
and the task's identity (its settings minus the grid axes, its type's version, whether its haystack fell back to the
built-in filler) match, so adding lengths to a sweep computes only the new cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.evals.haystack import fallback_reason
from toolkit.evals.specs import TaskBase
from toolkit.output_paths import atomic_file
from toolkit.run_folder import read_suite

_GRID_AXES = {"name", "lengths", "depths", "samples", "batch_tokens", "threshold"}


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays, tensors (each has ``tolist``), sets and paths as plain JSON values."""
    if callable(getattr(value, "tolist", None)):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def write_json(path: Path, data: Any) -> None:
    """Write atomically (a crash never leaves half a file)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=jsonable), encoding="utf-8")


def haystack_fallbacks(task: TaskBase) -> list[str]:
    """Why the built-in filler stood in for a dataset of ``task`` (``fallback: true``), one line per source."""
    return [f"{field}: {reason}" for field, spec in task.haystacks().items() if (reason := fallback_reason(spec))]


def task_identity(task: TaskBase) -> dict[str, Any]:
    """What must match for recorded cells to be reused: settings minus the axes cells are keyed by, the type's
    version, the content of the files the task reads, and whether a haystack fell back to the built-in filler."""
    identity = task.model_dump(mode="json", exclude=_GRID_AXES | task.cache_ignores)
    identity["version"] = task.version
    if files := task.read_files():
        identity["files"] = files
    if haystack_fallbacks(task):
        identity["haystack_fallback"] = True
    return identity


class SuiteResults:
    """Holds and saves ``<folder>/<suite>.json``; resumes from it when the model is the same."""

    def __init__(self, path: Path, suite: str, tag: str, model: str, fingerprint: str):
        self.path = path
        self.data: dict[str, Any] = {"suite": suite, "tag": tag, "model": model, "fingerprint": fingerprint,
                                     "tasks": {}}
        old = read_suite(path)
        if old is not None and old.get("fingerprint") == fingerprint and old.get("suite") == suite:
            self.data["tasks"] = old["tasks"]
        self._identities: dict[str, dict[str, Any]] = {}

    def _identity(self, task: TaskBase) -> dict[str, Any]:
        """:func:`task_identity`, once per task: it hashes the files the task reads, and progress is saved often."""
        if task.key not in self._identities:
            self._identities[task.key] = task_identity(task)
        return self._identities[task.key]

    def _entry(self, task: TaskBase) -> dict[str, Any] | None:
        entry = self.data["tasks"].get(task.key)
        return entry if entry and entry.get("identity") == self._identity(task) else None

    def cells(self, task: TaskBase) -> list[dict[str, Any]]:
        """Cells recorded earlier for this task (empty when its settings changed)."""
        entry = self._entry(task)
        return list(entry.get("cells", [])) if entry else []

    def finished(self, task: TaskBase) -> dict[str, Any] | None:
        """The complete result of a task without cells (lm_eval, perplexity), if recorded."""
        entry = self._entry(task)
        return entry if entry and entry.get("complete") else None

    def record(self, task: TaskBase, cells: list[dict[str, Any]] | None = None,
               summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save progress (``summary=None``: partial) or the final result; returns the task's entry."""
        entry: dict[str, Any] = {"type": task.type, "score": None}
        entry.update(summary or {})
        entry.update(complete=summary is not None, identity=self._identity(task))
        if fallbacks := haystack_fallbacks(task):
            entry["haystack_fallback"] = "; ".join(fallbacks)
        if cells is not None:
            entry["cells"] = cells
        self.data["tasks"][task.key] = entry
        write_json(self.path, self.data)
        return entry

    def finish(self, keys: set[str]) -> dict[str, Any]:
        """Drop results of tasks no longer in the suite, save, and return the suite's results."""
        self.data["tasks"] = {key: entry for key, entry in self.data["tasks"].items() if key in keys}
        write_json(self.path, self.data)
        return self.data
