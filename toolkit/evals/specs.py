"""The settings of each built-in task type (pydantic, unknown keys rejected); the suite schema is
:mod:`toolkit.evals.suite`, the task types themselves :mod:`toolkit.evals.registry`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from toolkit.data.needle import KEY_NAMES
from toolkit.errors import UserError
from toolkit.recipe.schema import RopeSpec, Strict
from toolkit.recipe.yaml_files import resolve_relative

RulerName = Literal["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"]
RULER_TASKS: tuple[RulerName, ...] = get_args(RulerName)
Depth = Annotated[float, Field(ge=0.0, le=1.0)]


class HaystackSpec(Strict):
    """Where haystack (or long-document) text comes from."""

    source: Literal["builtin", "text", "dataset"] = "builtin"
    """``builtin``: the offline filler of ``toolkit.data.needle``; ``text``: a local text file split into
    sentences; ``dataset``: a ``datasets`` dataset (a failure to read it stops the evaluation, see ``fallback``)."""
    path: str | None = None
    """Text file (relative to the suite) or dataset name."""
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    fallback: bool = False
    """``dataset`` only: use the built-in filler when the dataset cannot be read, instead of failing; the
    results record it (``haystack_fallback``) and the report shows it."""

    @model_validator(mode="after")
    def _path_when_needed(self) -> HaystackSpec:
        if self.source != "builtin" and not self.path:
            raise ValueError(f"source {self.source!r} needs a path")
        return self


class TaskBase(Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Key of the task in the results; defaults to its type."""
    seed: int = 0
    if TYPE_CHECKING:
        type: str
        """Every task type declares it as ``Literal["<name>"]``; the suite tells tasks apart by it."""

    @property
    def key(self) -> str:
        return self.name or self.type

    def haystacks(self) -> dict[str, HaystackSpec]:
        """The task's text sources by field name."""
        return {name: value for name in type(self).model_fields
                if isinstance(value := getattr(self, name), HaystackSpec)}

    def resolve_paths(self, base: Path, where: str) -> None:
        """Local paths relative to the suite's folder ``base``; a missing one is an error now (``where``: the
        task's place in the suite, for the message)."""
        for field, spec in self.haystacks().items():
            if spec.source == "text":
                spec.path = resolve_relative(spec.path, base)
                if not Path(spec.path or "").is_file():
                    raise UserError(f"{where}.{field}.path: no such text file {spec.path}")


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
    chat: bool = False
    """Ask in the model's chat template (instruct models): haystack and question are the user's turn and the
    assistant's turn starts with the answer's lead (``The pass key for <key> is``). Lengths count the template's
    tokens too. The tokenizer must have a chat template."""


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

    def resolve_paths(self, base: Path, where: str) -> None:
        super().resolve_paths(base, where)
        if self.include_path:
            self.include_path = resolve_relative(self.include_path, base)
            if not Path(self.include_path or "").is_dir():
                raise UserError(f"{where}.include_path: no such folder {self.include_path}")


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
