"""The typed evaluation suite: a YAML file with a ``name`` and a list of ``tasks`` (each with a ``type``).

Unknown keys are rejected and every mistake is one line naming the file, line and field path, e.g.
``evals/x.yaml:7: tasks[0].depths[1]: Input should be less than or equal to 1``. ``include:`` pulls the
tasks of other suite files in first. Local paths resolve against the suite file's folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, ValidationError, model_validator

from toolkit.errors import UserError
from toolkit.evals.registry import TASK_TYPES
from toolkit.evals.specs import TaskBase
from toolkit.recipe.strict import NAME_PATTERN, Strict
from toolkit.recipe.yaml_files import read_yaml, resolve_relative, validate_as, validation_message

if TYPE_CHECKING:
    Task = TaskBase  # the union below is built at run time from the registry, which a type checker cannot follow
else:
    Task = Annotated[Union[tuple(kind.spec for kind in TASK_TYPES.values())], Field(discriminator="type")]  # noqa: UP007
    """Any registered task type's settings, told apart by ``type``."""


class Suite(Strict):
    """A named list of tasks."""

    name: str = Field(pattern=NAME_PATTERN)
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
    if not isinstance(kind, str) or kind not in TASK_TYPES:
        raise UserError(f"{where}.type: must be one of {', '.join(TASK_TYPES)} (got {kind!r})")
    try:
        return TASK_TYPES[kind].spec.model_validate(item)
    except ValidationError as exc:
        raise UserError(validation_message(exc, source, node, prefix=("tasks", index))) from None


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
        task.resolve_paths(base, f"{path}: tasks[{i}]")
    return validate_as(Suite, {**data, "tasks": included + tasks}, str(path), node)


def load_suites(paths: Sequence[str | Path], label: Callable[[int], str]) -> list[Suite]:
    """Every suite of ``paths``, in order. Each writes ``<name>.json``, so two with one name is a one-line
    :class:`UserError` through ``label(i)``, the way the caller names its i-th suite."""
    suites: list[Suite] = []
    first: dict[str, int] = {}  # suite name -> the index of the path that named it first
    for i, path in enumerate(paths):
        suite = load_suite(path)
        if (j := first.setdefault(suite.name, i)) != i:
            raise UserError(f"{label(i)}: {path} is named {suite.name} like {paths[j]}; results are written per "
                            "suite name, so names must differ")
        suites.append(suite)
    return suites
