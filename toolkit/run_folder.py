"""The run folder's layout, written by the runner and read by the report, the verdict, the card and push.

``runs/<name>/``: ``recipe.resolved.yaml``, ``run_info.json``, ``metrics.jsonl``, ``checkpoints/``, ``final/``
(full weights, or a LoRA adapter with ``merged/`` full weights and, from a random init, its ``base/``),
``eval/<tag>/<suite>.json`` (``<tag>``: ``base`` before training, ``stage-<i>-<name>`` after stage i),
``report.md``, ``report.html`` and PNG plots. Readers are tolerant: a missing or unreadable file reads as empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import UserError
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import Recipe, TrainSpec
from toolkit.recipe.yaml_files import validate_as

RECIPE = "recipe.resolved.yaml"
RUN_INFO = "run_info.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
ADAPTER_CONFIG = "adapter_config.json"  # peft's name for it (peft.utils.CONFIG_NAME)
BASE_FOLDER = "base"
MERGED_FOLDER = "merged"
EVAL = "eval"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
BASE_TAG = "base"
_STAGE_TAG = re.compile(r"^stage-(\d+)-(.+)$")

Evals = dict[str, dict[str, dict[str, Any]]]
"""tag -> suite name -> that suite's results JSON."""


def is_adapter_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds a LoRA adapter (its ``adapter_config.json``) rather than full weights."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def stage_tag(index: int, name: str) -> str:
    """The eval tag after stage ``index`` named ``name``: ``stage-<index>-<name>``."""
    return f"stage-{index}-{name}"


def parse_stage_tag(tag: str) -> tuple[int, str] | None:
    """(stage index, stage name) of a ``stage-<i>-<name>`` tag; ``None`` for ``base`` or any other tag."""
    match = _STAGE_TAG.match(tag)
    return (int(match.group(1)), match.group(2)) if match else None


def stage_index(tag: str) -> int | None:
    """The stage index of a ``stage-<i>-<name>`` tag; ``None`` for any other tag."""
    parsed = parse_stage_tag(tag)
    return parsed[0] if parsed else None


def eval_tag(recipe: Recipe, index: int | None) -> str:
    """``base`` before training, ``stage-<i>-<name>`` after stage i."""
    return BASE_TAG if index is None else stage_tag(index, recipe.train.stage_name(index))


def tag_order(tags: Iterable[str]) -> list[str]:
    """``base`` first, then stages by index, then any other tag by name."""
    def key(tag: str) -> tuple[int, int, str]:
        index = stage_index(tag)
        return (0 if tag == BASE_TAG else 1 if index is not None else 2, index or 0, tag)
    return sorted(tags, key=key)


def final_stage_tag(tags: Iterable[str]) -> str | None:
    """The tag of the last stage evaluated (by index, not by name); ``None`` if no stage was."""
    stages = [(index, tag) for tag in tags if (index := stage_index(tag)) is not None]
    return max(stages)[1] if stages else None


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_recipe_dict(run_dir: Path) -> dict[str, Any]:
    """``recipe.resolved.yaml`` as written (a dict; empty when missing)."""
    path = run_dir / RECIPE
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def typed_recipe(data: dict[str, Any]) -> Recipe | None:
    """``data`` validated as a :class:`Recipe` (``None`` when it is not a complete valid recipe)."""
    try:
        return validate_as(Recipe, data, RECIPE)
    except UserError:
        return None


def typed_train(data: dict[str, Any]) -> TrainSpec | None:
    """The ``train`` block typed: the recipe's when it validates, else the block alone, else ``None``."""
    recipe = typed_recipe(data)
    if recipe is not None:
        return recipe.train
    try:
        return validate_as(TrainSpec, data.get("train") or {}, RECIPE)
    except UserError:
        return None


def stage_data(data: dict[str, Any]) -> list[DataSpec]:
    """The data of every stage (``TrainSpec.stage_data``); empty when the train block does not validate."""
    train = typed_train(data)
    return [train.stage_data(i) for i in range(len(train.stages))] if train else []


def read_run_info(run_dir: Path, required: bool = False) -> dict[str, Any]:
    """``run_info.json`` (empty when missing, or a UserError naming the file when ``required``)."""
    path = run_dir / RUN_INFO
    if required and not path.is_file():
        raise UserError(f"{path}: not found (is {run_dir} a run folder written by `python -m toolkit train`?)")
    info = read_json(path)
    return info if isinstance(info, dict) else {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl`` (empty when missing; a line still being written, or cut off by a
    killed run, is left out)."""
    path = run_dir / METRICS
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    return [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]


def eval_dir(run_dir: Path, tag: str) -> Path:
    return run_dir / EVAL / tag


def eval_tags(run_dir: Path) -> list[str]:
    """The tags that have a folder under ``eval/`` (some may hold no results yet), in :func:`tag_order`."""
    root = run_dir / EVAL
    return tag_order(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def read_suites(tag_dir: Path) -> dict[str, dict[str, Any]]:
    """Every results JSON (``<suite>.json`` with a ``tasks`` mapping) of one tag folder, keyed by suite name."""
    suites: dict[str, dict[str, Any]] = {}
    for path in sorted(tag_dir.glob("*.json")) if tag_dir.is_dir() else []:
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
            suites[data.get("suite", path.stem)] = data
    return suites


def read_evals(run_dir: Path) -> Evals:
    """The results of every tag that has some."""
    evals = {tag: read_suites(eval_dir(run_dir, tag)) for tag in eval_tags(run_dir)}
    return {tag: suites for tag, suites in sorted(evals.items()) if suites}


@dataclass
class Run:
    """A run folder read once: recipe (as written), run_info, metrics and eval results."""

    folder: Path
    recipe: dict[str, Any]
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: Evals

    @cached_property
    def typed_recipe(self) -> Recipe | None:
        return typed_recipe(self.recipe)

    @property
    def tags(self) -> list[str]:
        return tag_order(self.evals)

    @property
    def final(self) -> str | None:
        """The last evaluation (the final model)."""
        return self.tags[-1] if self.evals else None

    @property
    def reference(self) -> str | None:
        """The model before any context extension, which the final model is compared with: the last stage
        trained within the native length (a model trained from scratch), else the starting model (``base``)."""
        tags, native = self.tags, self.info.get("native_length")
        found = BASE_TAG if BASE_TAG in tags else None
        for index, stage in enumerate(self.info.get("stages") or []):
            if native and stage.get("seq_len", native + 1) <= native:
                found = next((tag for tag in tags if stage_index(tag) == index), found)
        return found

    def entry(self, tag: str, suite: str, task: str) -> dict[str, Any] | None:
        """One task's results at one tag."""
        return self.evals.get(tag, {}).get(suite, {}).get("tasks", {}).get(task)

    def tasks(self, kind: str | None = None) -> list[tuple[str, str]]:
        """(suite, task) pairs in order of first appearance, optionally of one type."""
        seen: dict[tuple[str, str], None] = {}
        for tag in self.tags:
            for suite, data in self.evals[tag].items():
                for key, entry in data["tasks"].items():
                    if kind is None or entry.get("type") == kind:
                        seen[(suite, key)] = None
        return list(seen)

    def found(self, suite: str, task: str) -> list[tuple[str, dict[str, Any]]]:
        """(tag, entry) of every tag that has results for ``suite``/``task``."""
        return [(tag, entry) for tag in self.tags if (entry := self.entry(tag, suite, task))]


def require_run(folder: Path) -> None:
    """A UserError unless ``folder`` is a run folder: one holding its recipe, its run info or evaluations, or an empty
    one (a run stopped before writing anything); a report is never written among other files."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")
    if any(folder.iterdir()) and not any((folder / name).exists() for name in (RECIPE, RUN_INFO, EVAL)):
        raise UserError(f"{folder}: not a run folder (it holds files, but no {RECIPE}, {RUN_INFO} or {EVAL}/)")


def load_run(folder: Path) -> Run:
    """Read the run folder ``folder`` (a UserError when it does not exist)."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")
    return Run(folder, read_recipe_dict(folder), read_run_info(folder), read_metrics(folder), read_evals(folder))
