"""The run folder's layout, written by the runner and read by the report, the verdict, the card and push.

``runs/<name>/``: ``recipe.resolved.yaml``, ``run_info.json``, ``metrics.jsonl``, ``checkpoints/``, ``final/``
(full weights, or a LoRA adapter with ``merged/`` full weights and, from a random init, its ``base/``),
``eval/<tag>/<suite>.json`` (``<tag>``: ``base`` before training, ``stage-<i>-<name>`` after stage i),
``report.md``, ``report.html`` and PNG plots. A missing file reads as empty; a corrupt recipe, run info,
``metrics.jsonl`` line or results file (a field missing or of the wrong type) is a UserError naming the file (and
line) and the field; a file of ``eval/<tag>/`` that is no JSON object holding ``tasks`` is no results file and is left
out. The fields one task type's entries add are that type's (``TaskType.entry``), checked by a reader that knows the
types (:mod:`toolkit.evals.run_results`) through ``load_run``'s ``check``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Required

from pydantic import BaseModel, TypeAdapter, ValidationError, model_validator, with_config
from typing_extensions import TypedDict

from toolkit.errors import UserError
from toolkit.file_reading import SHAPE_CONFIG, json_object, read_json_object, read_text
from toolkit.recipe.schema import Recipe, VerdictSpec
from toolkit.recipe.yaml_files import read_yaml, validate_as, validation_message

RECIPE = "recipe.resolved.yaml"
RUN_INFO = "run_info.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
"""TensorBoard's event files (``logging.backend: tensorboard``)."""
CHECKPOINTS = "checkpoints"
FINAL = "final"
ADAPTER_CONFIG = "adapter_config.json"  # peft's name for it (peft.utils.CONFIG_NAME)
NO_COMMIT = "not recorded"
"""What reports say of the toolkit's commit where none is known (an installed package, an older run)."""
MODEL_CONFIG = "config.json"  # transformers' name for a model folder's (transformers.utils.CONFIG_NAME)
BASE_FOLDER = "base"
"""Inside a LoRA run's ``final/``: the base weights, written when the base was built from ``init_config``."""
MERGED_FOLDER = "merged"
MERGED_MARKER = "merged_from.json"
"""Written into every merged model's folder (the base the adapter named): a folder ``merge --out`` may replace."""
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


def evaluations(tags: Iterable[str]) -> dict[str, int | None]:
    """Each evaluation of the model among ``tags`` (in their order) -> the stage after which it was made, ``None`` for
    the starting model's (``base``); tags of other names are left out."""
    return {tag: stage_index(tag) for tag in tags if tag == BASE_TAG or stage_index(tag) is not None}


def recipe_evaluations(recipe: Recipe) -> dict[str, int | None]:
    """The evaluations a run of ``recipe`` makes (:meth:`Recipe.evaluated_models`), as :func:`evaluations` reads them
    back from its folder."""
    return {eval_tag(recipe, index): index for index in recipe.evaluated_models()}


def before_extension(evaluated: Mapping[str, int | None], native: int | None,
                     stage_lengths: Sequence[int | None]) -> str | None:
    """Of the ``evaluated`` models (:func:`evaluations`), the one before any context extension, which the final model
    is compared with: the last stage trained within the ``native`` length (a model trained from scratch), else the
    starting model; ``None`` when neither was evaluated."""
    found = next((tag for tag, index in evaluated.items() if index is None), None)
    for index, length in enumerate(stage_lengths):
        if native and length is not None and length <= native:
            found = next((tag for tag, at in evaluated.items() if at == index), found)
    return found


class VerdictLength(NamedTuple):
    """One length of the verdict task's grid that ``eval.verdict`` reads."""

    before: bool
    """At the model before extension (else at the final model)."""
    length: int
    field: str
    """The recipe's field that asks for it."""
    what: str
    """What that length is, e.g. ``the native length``."""


def verdict_lengths(spec: VerdictSpec, native: int | None, extended: int) -> list[VerdictLength]:
    """The lengths of ``spec.task``'s grid the verdict reads (``toolkit.report.verdict.compute_verdict``) and the
    recipe's check before training (``toolkit.recipe.loading``) requires, both from here: the ``native`` length before
    extension (left out when not known), the last stage's seq_len (``extended``) after it, and before it too under
    ``extended_before_max``."""
    task, last = "eval.verdict.task", "the last stage's seq_len"
    needs = [] if native is None else [VerdictLength(True, native, task, "the native length")]
    needs.append(VerdictLength(False, extended, task, last))
    if spec.extended_before_max is not None:
        needs.append(VerdictLength(True, extended, "eval.verdict.extended_before_max", last))
    return needs


def verdict_models(evaluated: Mapping[str, int | None], native: int | None,
                   stage_lengths: Sequence[int | None]) -> tuple[str, str] | None:
    """The two models ``eval.verdict`` compares, from the ``evaluated`` ones (:func:`evaluations`): the one before
    extension (:func:`before_extension`) and the final model (the last stage's evaluation); ``None`` unless both were
    evaluated and differ."""
    reference, final = before_extension(evaluated, native, stage_lengths), final_stage_tag(evaluated)
    return (reference, final) if reference is not None and final is not None and reference != final else None


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8, or not JSON
        return None


FileCheck = Callable[[Path, dict[str, Any]], None]
"""A further check of one results file as read: ``(path, its JSON)``, a UserError when it fails."""


def checked(shape: TypeAdapter[Any], data: dict[str, Any], source: str, prefix: tuple[str, ...] = (),
            partial: bool = False) -> dict[str, Any]:
    """``data`` when it has ``shape``; else a UserError naming ``source`` and the first field (below ``prefix``)
    missing or of the wrong type. ``partial``: fields may be missing (an entry of an evaluation cut short)."""
    try:
        shape.validate_python(data)
    except ValidationError as exc:
        errors = [error for error in exc.errors() if not (partial and error["type"] == "missing")]
        if errors:
            found = ValidationError.from_exception_data(exc.title, errors)  # type: ignore[arg-type]
            raise UserError(validation_message(found, source, prefix=prefix)) from None
    return data


def read_recipe(run_dir: Path) -> Recipe | None:
    """``recipe.resolved.yaml`` typed (``None`` when missing; a UserError naming the file and line when it is no valid
    recipe)."""
    path = run_dir / RECIPE
    if not path.is_file():
        return None
    data, node = read_yaml(path)
    return validate_as(Recipe, data, str(path), node)


class StageInfo(BaseModel):
    """One stage as it ran: its length, the RoPE written into the model's config, and its steps."""

    name: str | None = None
    seq_len: int | None = None
    rope_parameters: dict[str, Any] | None = None
    max_position_embeddings: int | None = None
    steps: int | None = None


class Change(BaseModel):
    """A recipe setting a resume changed: where the recipe holds it, its value before (in the run's record) and
    after."""

    setting: str
    before: Any
    after: Any


class Resume(BaseModel):
    """One resume: when (ISO 8601, UTC), the checkpoint it continued from (its stage, and the steps done in it) and
    the settings in which its recipe differed from the run's record (``recipe.resolved.yaml``, which it rewrote).
    Older runs recorded only when: their entries read with the rest unknown (None)."""

    at: str
    stage: int | None = None
    step: int | None = None
    changed: list[Change] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_time(cls, data: Any) -> Any:
        """An older entry, the time alone."""
        return {"at": data} if isinstance(data, str) else data


class RunInfo(BaseModel):
    """``run_info.json``, written by the runner: what the run ran on (versions, device, engine, precision, attention
    and loss kernel and why) and each stage. Every key may be missing from an older file."""

    recipe: str | None = None
    method: str | None = None
    device: str | None = None
    processes: int | None = None
    data_parallel: int | None = None
    engine: str | None = None
    precision: str | None = None
    attention: str | None = None
    attention_reason: str | None = None
    loss_kernel: str | None = None
    loss_kernel_reason: str | None = None
    allocator: str | None = None
    """The caching allocator's settings (:func:`toolkit.environment.allocator_setting`)."""
    versions: dict[str, str] = {}
    base_model: str | None = None
    native_length: int | None = None
    stages: list[StageInfo] = []
    started: str | None = None
    """When the run started (ISO 8601, UTC): its first start, kept by a resume."""
    resumed: list[Resume] = []
    """Each resume; the other fields are the latest start's."""
    commit: str | None = None
    """The toolkit's commit it ran (``toolkit.environment.source_commit``; ``-dirty``: with changes not committed)."""

    @property
    def commit_text(self) -> str:
        """The commit as reports state it: ``not recorded`` for a run without one (older, or not from a checkout)."""
        return self.commit or NO_COMMIT


def read_run_info(run_dir: Path, required: bool = False) -> RunInfo:
    """``run_info.json`` typed (empty when missing, or a UserError naming the file when ``required``; a UserError
    naming the file when it is no JSON object of the expected keys)."""
    path = run_dir / RUN_INFO
    if not path.is_file():
        if required:
            raise UserError(f"{path}: not found (is {run_dir} a run folder written by `python -m toolkit train`?)")
        return RunInfo()
    return validate_as(RunInfo, read_json_object(path), str(path))


@with_config(SHAPE_CONFIG)
class MetricsRow(TypedDict, total=False):
    """One ``metrics.jsonl`` row as the training loop writes it and the report reads it: the step and its loss always,
    every other figure of its type where present; other keys are kept."""

    global_step: Required[int]
    loss: Required[float]
    stage: int
    stage_name: str
    step: int
    lr: float
    tokens_per_s: float
    real_tokens_per_s: float
    peak_memory_gib: float
    elapsed_s: float
    seq_len: int
    source_weights: dict[str, float]
    source_tokens: dict[str, int]
    source_skipped_rows: dict[str, int]


_METRICS_ROW = TypeAdapter(MetricsRow)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl`` (empty when missing; a line still being written, or cut off by a
    killed run, is left out; a complete line that is no JSON object of :class:`MetricsRow`'s fields is a UserError
    naming the file, line and field)."""
    path = run_dir / METRICS
    lines = read_text(path).splitlines(keepends=True) if path.is_file() else []
    return [checked(_METRICS_ROW, json_object(line, path, number), f"{path}:{number}")
            for number, line in enumerate(lines, start=1) if line.endswith("\n") and line.strip()]


def eval_dir(run_dir: Path, tag: str) -> Path:
    return run_dir / EVAL / tag


def eval_tags(run_dir: Path) -> list[str]:
    """The tags that have a folder under ``eval/`` (some may hold no results yet), in :func:`tag_order`."""
    root = run_dir / EVAL
    return tag_order(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


@with_config(SHAPE_CONFIG)
class TaskEntry(TypedDict, total=False):
    """One task's results in a results file (:mod:`toolkit.evals.results` writes them): the fields every task type
    shares, and the needle counts the verdict reads, of their types where present; each type adds its own
    (``TaskType.entry``)."""

    type: Required[str]
    score: float | None
    complete: bool
    haystack_fallback: str
    cells: list[dict[str, Any]]
    scores_by_length: dict[str, float]
    n_by_length: dict[str, int]
    correct_by_length: dict[str, int]


@with_config(SHAPE_CONFIG)
class SuiteFile(TypedDict, total=False):
    """A results file, ``eval/<tag>/<suite>.json``: its suite's name and tasks."""

    suite: str
    tasks: Required[dict[str, TaskEntry]]


_SUITE_FILE = TypeAdapter(SuiteFile)


def read_suite(path: Path, check: FileCheck | None = None) -> dict[str, Any] | None:
    """The results file ``path``; ``None`` when it is missing, unreadable or no JSON object holding ``tasks`` (no
    results file); a UserError naming the file and field when a field is missing or of the wrong type (or ``check``
    fails)."""
    data = read_json(path)
    if not (isinstance(data, dict) and "tasks" in data):
        return None
    checked(_SUITE_FILE, data, str(path))
    if check is not None:
        check(path, data)
    return data


def read_suites(tag_dir: Path, check: FileCheck | None = None) -> dict[str, dict[str, Any]]:
    """Every results file (:func:`read_suite`) of one tag folder, keyed by suite name."""
    suites: dict[str, dict[str, Any]] = {}
    for path in sorted(tag_dir.glob("*.json")) if tag_dir.is_dir() else []:
        if (data := read_suite(path, check)) is not None:
            suites[data.get("suite", path.stem)] = data
    return suites


def read_evals(run_dir: Path, check: FileCheck | None = None) -> Evals:
    """The results of every tag that has some."""
    evals = {tag: read_suites(eval_dir(run_dir, tag), check) for tag in eval_tags(run_dir)}
    return {tag: suites for tag, suites in sorted(evals.items()) if suites}


@dataclass
class Run:
    """A run folder read once: recipe (``None`` when it wrote none), run info, metrics and eval results."""

    folder: Path
    recipe: Recipe | None
    info: RunInfo
    metrics: list[dict[str, Any]]
    evals: Evals

    @property
    def tags(self) -> list[str]:
        return tag_order(self.evals)

    @property
    def final(self) -> str | None:
        """The last evaluation (the final model; the verdict and the model card take the last stage's:
        :func:`final_stage_tag`, the same tag unless an evaluation was written under a tag of its own)."""
        return self.tags[-1] if self.evals else None

    @property
    def reference(self) -> str | None:
        """The model before any context extension, which the final model is compared with: the last stage
        trained within the native length (a model trained from scratch), else the starting model (``base``)."""
        return before_extension(evaluations(self.tags), self.info.native_length,
                                [stage.seq_len for stage in self.info.stages])

    @property
    def compared(self) -> str | None:
        """:attr:`reference` when it is not the final model itself (a run that never extended the context has no
        model before extension to compare with)."""
        reference = self.reference
        return reference if reference != self.final else None

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


def holds_run_files(folder: Path) -> bool:
    """Whether ``folder`` holds a run's files: its recipe, its run info or evaluations."""
    return any((folder / name).exists() for name in (RECIPE, RUN_INFO, EVAL))


def holds_other_files(folder: Path) -> bool:
    """Whether ``folder`` holds files but none of a run's (:func:`holds_run_files`): a run or a report is never
    written among them."""
    return folder.is_dir() and any(folder.iterdir()) and not holds_run_files(folder)


def _require_folder(folder: Path) -> None:
    if folder.is_file():
        raise UserError(f"{folder}: a file, not a run folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")


def require_final(run_dir: Path) -> Path:
    """``run_dir``'s ``final/`` model; a UserError when ``run_dir`` is no run folder or its run has not finished."""
    _require_folder(run_dir)
    final = run_dir / FINAL
    if not final.is_dir():
        require_run(run_dir)  # a folder of other files (a run's final/ itself, say) is no unfinished run
        raise UserError(f"{final}: not found; the run has no final model yet (train it to the end first)")
    return final


def require_run(folder: Path) -> None:
    """A UserError unless ``folder`` is a run folder: one holding its recipe, its run info or evaluations (training
    writes its recipe first, so an empty folder is none either); a report is never written among other files, nor
    into a folder that holds nothing to report."""
    _require_folder(folder)
    if not any(folder.iterdir()):
        raise UserError(f"{folder}: not a run folder (it is empty: no {RECIPE}, {RUN_INFO} or {EVAL}/)")
    if holds_other_files(folder):
        run = f"; name its run folder, {folder.parent}" if folder.name == FINAL and (folder.parent / RECIPE).is_file() \
            else ""
        raise UserError(f"{folder}: not a run folder (it holds files, but no {RECIPE}, {RUN_INFO} or {EVAL}/){run}")


def load_run(folder: Path, info_required: bool = False, check: FileCheck | None = None) -> Run:
    """Read the run folder ``folder`` (a UserError when it does not exist, a file of it is corrupt or fails
    ``check``, or, when ``info_required``, it holds no run_info.json)."""
    _require_folder(folder)
    return Run(folder, read_recipe(folder), read_run_info(folder, info_required), read_metrics(folder),
               read_evals(folder, check))
