"""The settings every task type builds on (pydantic, unknown keys rejected): ``TaskBase`` with the cache version,
and the text sources. Also the needle grid that ``niah`` and ``rope_compare`` share (``export --check`` runs
``niah`` in llama.cpp: :mod:`toolkit.export.llama_cpp_needles`). Every other type's settings are in its own module
(:mod:`toolkit.evals.registry` lists them)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, Field, PositiveInt, model_validator

from toolkit.data.corpus import missing_file_hint
from toolkit.data.needle import KEY_NAMES
from toolkit.errors import UserError
from toolkit.file_reading import sha256_of
from toolkit.recipe.strict import NAME_PATTERN, Seed, Strict
from toolkit.recipe.yaml_files import resolve_relative

Depth = Annotated[float, Field(ge=0.0, le=1.0)]
Item = TypeVar("Item")


def _distinct(values: list[Item]) -> list[Item]:
    repeated = sorted({str(value) for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once (each would be scored again and count twice)")
    return values


def file_digests(paths: Iterable[str | Path | None]) -> dict[str, str]:
    """Path -> SHA-256 of each of ``paths`` that is a file."""
    return {str(path): sha256_of(Path(path)) for path in paths if path and Path(path).is_file()}


Distinct = AfterValidator(_distinct)
"""A list whose items must differ: a repeated length, depth or task name would inflate n with the same prompts."""


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
    name: str | None = Field(None, pattern=NAME_PATTERN)
    """Key of the task in the results; defaults to its type."""
    seed: Seed = 0
    version: ClassVar[int] = 1
    """The cache version of the type: bump it when its prompts, data or scoring change, so results recorded by
    another version are never reused."""
    cache_ignores: ClassVar[frozenset[str]] = frozenset()
    """Settings that key the recorded cells rather than change them (beyond lengths, depths, samples, ...)."""
    if TYPE_CHECKING:
        type: str
        """Every task type declares it as ``Literal["<name>"]``; the suite tells tasks apart by it."""

    @property
    def key(self) -> str:
        return self.name or self.type

    def read_files(self) -> dict[str, str]:
        """The files whose content decides the results (name -> SHA-256), so that recorded results of another
        content are not reused: the local text haystacks."""
        return file_digests(spec.path for spec in self.haystacks().values() if spec.source == "text")

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
                path = Path(spec.path or "")
                if not path.is_file():
                    path = path if path.is_absolute() else base / path
                    raise UserError(f"{where}.{field}.path: no such text file {path}{missing_file_hint(path)}")
                if not _holds_text(path):
                    raise UserError(f"{where}.{field}.path: {path} holds no text")


def _holds_text(path: Path) -> bool:
    """Whether the file holds anything but white space (read until the first text)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return any(chunk.strip() for chunk in iter(lambda: handle.read(1 << 16), ""))


class NeedleGrid(TaskBase):
    """Needle retrieval over a depth x length grid, scored by exact match of the asked needle's value."""

    lengths: Annotated[list[PositiveInt], Field(min_length=1), Distinct]
    """Prompt lengths in the evaluated model's tokens."""
    depths: Annotated[list[Depth], Field(min_length=1), Distinct] = [0.0, 0.25, 0.5, 0.75, 1.0]
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

