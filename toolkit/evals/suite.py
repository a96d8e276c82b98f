"""The typed evaluation suite: a YAML file with a ``name`` and a list of ``tasks`` (each with a ``type``).

Unknown keys are rejected and every mistake is one line naming the file, line and field path, e.g.
``evals/x.yaml:7: tasks[0].depths[1]: Input should be less than or equal to 1``. ``include:`` pulls the
tasks of other suite files in first. Local paths resolve against the suite file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from toolkit.data.needle import KEY_NAMES
from toolkit.errors import UserError
from toolkit.recipe_loading import read_yaml, resolve_relative, validate_as, validation_message
from toolkit.schema import RopeSpec, Strict

RulerName = Literal["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"]
RULER_TASKS: tuple[str, ...] = RulerName.__args__
Depth = Annotated[float, Field(ge=0.0, le=1.0)]


class HaystackSpec(Strict):
    """Where haystack (or long-document) text comes from."""

    source: Literal["builtin", "text", "dataset"] = "builtin"
    """``builtin``: the offline filler of ``toolkit.data.needle``; ``text``: a local text file split into
    sentences; ``dataset``: a ``datasets`` dataset (falls back to builtin when it cannot be reached)."""
    path: str | None = None
    """Text file (relative to the suite) or dataset name."""
    config: str | None = None
    split: str = "train"
    text_field: str = "text"

    @model_validator(mode="after")
    def _path_when_needed(self) -> HaystackSpec:
        if self.source != "builtin" and not self.path:
            raise ValueError(f"source {self.source!r} needs a path")
        return self


class TaskBase(Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Key of the task in the results; defaults to its type."""
    seed: int = 0

    @property
    def key(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class NeedleGrid(TaskBase):
    """Needle retrieval over a depth x length grid, scored by exact match of the asked needle's value."""

    lengths: list[PositiveInt] = Field(min_length=1)
    """Prompt lengths in the evaluated model's tokens."""
    depths: list[Depth] = [0.0, 0.25, 0.5, 0.75, 1.0]
    """Where the asked needle sits: fraction of the haystack before it."""
    samples: PositiveInt = 3
    """Prompts per (length, depth) cell."""
    num_needles: int = Field(1, ge=1, le=len(KEY_NAMES))
    """Needles hidden per prompt; one is asked, the rest are distractors at random depths."""
    digits: int = Field(5, ge=1, le=12)
    """Digits of each needle's value."""
    haystack: HaystackSpec = HaystackSpec()
    batch_tokens: PositiveInt = 16384
    """Prompts of one length are batched up to this many tokens per forward pass."""


class NiahTask(NeedleGrid):
    type: Literal["niah"]


class RopeCompareTask(NeedleGrid):
    """The same model evaluated zero-shot under several RoPE settings (which extension works untrained)."""

    type: Literal["rope_compare"]
    settings: dict[str, RopeSpec] = Field(min_length=1)
    """Name -> RoPE setting, e.g. ``{none: {type: default}, yarn: {type: yarn, factor: 4}}``."""
    native_length: PositiveInt | None = None
    """The context the model was trained at; ``None`` takes ``config.max_position_embeddings``."""


class RulerTask(TaskBase):
    """RULER's synthetic tasks, generated locally at any length and scored by generation."""

    type: Literal["ruler"]
    tasks: list[RulerName] = Field(default_factory=lambda: list(RULER_TASKS), min_length=1)
    lengths: list[PositiveInt] = Field(min_length=1)
    samples: PositiveInt = 4
    """Prompts per (task, length)."""
    threshold: float = Field(0.856, ge=0.0, le=1.0)
    """Effective length: the longest length whose score, and that of every shorter length, exceeds this."""
    digits: int = Field(5, ge=1, le=12)
    haystack: HaystackSpec = HaystackSpec()
    batch_tokens: PositiveInt = 16384


class LmEvalTask(TaskBase):
    """Tasks run through lm-eval on the loaded model (lm-eval's own tasks or ours in ``evals/lm_eval_tasks``)."""

    type: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1)
    include_path: str | None = None
    """Folder of extra task YAMLs (relative to the suite)."""
    num_fewshot: NonNegativeInt | None = None
    limit: PositiveInt | float | None = None
    """Documents per task (or a fraction); ``None`` runs all."""
    metadata: dict[str, Any] | None = None
    """Passed to the tasks, e.g. ``{max_seq_lengths: [4096, 8192]}`` for lm-eval's ``ruler``."""
    metric: str | None = None
    """Metric averaged into the task's score; ``None`` takes each lm-eval task's first metric."""
    batch_size: PositiveInt = 1
    max_length: PositiveInt | None = None
    """Context cap of lm-eval's HFLM; ``None`` lets HFLM read it from the model config."""


class PerplexityTask(TaskBase):
    """Loss by token position on long held-out documents."""

    type: Literal["perplexity"]
    length: PositiveInt
    """Document length in tokens."""
    bucket: PositiveInt
    """Width of the position buckets: [0, bucket), [bucket, 2*bucket), ..."""
    documents: PositiveInt = 4
    source: HaystackSpec = HaystackSpec()
    batch_tokens: PositiveInt = 16384

    @model_validator(mode="after")
    def _bucket_fits(self) -> PerplexityTask:
        if self.bucket > self.length:
            raise ValueError(f"bucket {self.bucket} is longer than length {self.length}")
        return self


Task = Annotated[Union[NiahTask, RulerTask, LmEvalTask, PerplexityTask, RopeCompareTask], Field(discriminator="type")]
_TASK_CLASSES: dict[str, type[TaskBase]] = {
    "niah": NiahTask, "ruler": RulerTask, "lm_eval": LmEvalTask, "perplexity": PerplexityTask,
    "rope_compare": RopeCompareTask}


class Suite(Strict):
    """A named list of tasks."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    include: list[str] = []
    """Other suite files whose tasks run first (relative to this file)."""
    tasks: list[Task] = []

    @model_validator(mode="after")
    def _unique_keys(self) -> Suite:
        seen: set[str] = set()
        for task in self.tasks:
            if task.key in seen:
                raise ValueError(f"two tasks are named {task.key!r}; give one a distinct name")
            seen.add(task.key)
        if not self.tasks:
            raise ValueError("no tasks (give tasks: or include:)")
        return self


def _parse_task(item: Any, index: int, source: str, node: Any) -> TaskBase:
    where = f"{source}: tasks[{index}]"
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected a mapping with a type")
    kind = item.get("type")
    if kind not in _TASK_CLASSES:
        raise UserError(f"{where}.type: must be one of {', '.join(_TASK_CLASSES)} (got {kind!r})")
    try:
        return _TASK_CLASSES[kind].model_validate(item)
    except ValidationError as exc:
        raise UserError(validation_message(exc, source, node, prefix=("tasks", index))) from None


def _resolve_paths(task: TaskBase, base: Path, where: str) -> None:
    """Local paths relative to the suite's folder; a missing text file or task folder is an error now."""
    for field in ("haystack", "source"):
        spec = getattr(task, field, None)
        if isinstance(spec, HaystackSpec) and spec.source == "text":
            spec.path = resolve_relative(spec.path, base)
            if not Path(spec.path or "").is_file():
                raise UserError(f"{where}.{field}.path: no such text file {spec.path}")
    if isinstance(task, LmEvalTask) and task.include_path:
        task.include_path = resolve_relative(task.include_path, base)
        if not Path(task.include_path or "").is_dir():
            raise UserError(f"{where}.include_path: no such folder {task.include_path}")


def load_suite(path: str | Path, _seen: tuple[Path, ...] = ()) -> Suite:
    """Read and validate a suite file (with its includes); one-line :class:`UserError` on any mistake."""
    path = Path(path)
    if path.resolve() in _seen:
        raise UserError(f"{path}: include cycle through {', '.join(str(p) for p in _seen)}")
    data, node = read_yaml(path)
    raw_tasks = data.pop("tasks", None) or []
    if not isinstance(raw_tasks, list):
        raise UserError(f"{path}: tasks: expected a list of tasks")
    tasks = [_parse_task(item, i, str(path), node) for i, item in enumerate(raw_tasks)]
    base = path.resolve().parent
    refs = data.get("include") or []
    if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
        raise UserError(f"{path}: include: expected a list of suite file paths")
    included: list[TaskBase] = []
    for ref in refs:
        target = Path(resolve_relative(ref, base) or ref)
        if not target.is_file():
            raise UserError(f"{path}: include: no such suite file {ref!r}")
        included.extend(load_suite(target, _seen + (path.resolve(),)).tasks)
    for i, task in enumerate(tasks):
        _resolve_paths(task, base, f"{path}: tasks[{i}]")
    return validate_as(Suite, {**data, "tasks": included + tasks}, str(path), node)
