"""Read a recipe YAML, apply dotted ``key=value`` overrides, validate into a typed :class:`Recipe`.

Every failure becomes a :class:`UserError` whose one line names the file, line and field path, e.g.
``recipes/x.yaml:14: train.stages[1].seq_len: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit.data.local_files import LOCAL_FORMATS
from toolkit.errors import UserError
from toolkit.evals.suite import load_suites
from toolkit.output_paths import write_text
from toolkit.recipe.schema import Recipe
from toolkit.recipe.yaml_files import parse_path, read_yaml, resolve_relative, validate_as


def override_keys(assignment: str) -> list[str | int]:
    """The recipe keys ``key.path[i]=value`` sets; ``stages`` is short for ``train.stages``."""
    if "=" not in assignment:
        raise UserError(f"override {assignment!r}: expected key=value")
    if not assignment.split("=", 1)[0].strip():
        raise UserError(f"override {assignment!r}: no key before '=' (key.path=value)")
    keys = parse_path(assignment.split("=", 1)[0].strip())
    return ["train", *keys] if keys[0] == "stages" else keys


def _index(target: Any, index: int, dotted: str) -> int:
    """``index`` into the list ``target`` counted from the start; a UserError naming the override where there is no
    such item."""
    if not isinstance(target, list):
        raise UserError(f"override {dotted}: index {index} of something that is not a list")
    if not -len(target) <= index < len(target):
        raise UserError(f"override {dotted}: index {index} is out of range (the list holds {len(target)})")
    return index % len(target)


def _step(target: Any, key: str | int, dotted: str) -> str | int:
    """The key of ``target`` that a step of the override names: a key of a mapping, or a list index counted from the
    start; digits into a mapping name its key as it is there (YAML reads ``256:`` as a number, ``"256":`` as a
    string). A UserError naming the override where ``target`` has no such step."""
    if isinstance(key, str):
        if not isinstance(target, dict):
            raise UserError(f"override {dotted}: {key!r} is not inside a mapping")
        return key
    if isinstance(target, dict):
        for present in (key, str(key)):
            if present in target:
                return present
    return _index(target, key, dotted)


def apply_override(data: dict[str, Any], assignment: str) -> tuple[str | int, ...]:
    """Set ``key.path[i]=value`` in ``data``; the value is read as YAML (numbers, booleans, lists). Returns the keys
    set, a negative index counted from the start (as validation names the field)."""
    keys = override_keys(assignment)
    dotted, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    target: Any = data
    for depth in range(len(keys) - 1):
        key = keys[depth] = _step(target, keys[depth], dotted)
        if isinstance(target, dict) and target.get(key) is None:
            target[key] = [] if isinstance(keys[depth + 1], int) else {}
        target = target[key]
    keys[-1] = _step(target, keys[-1], dotted)
    target[keys[-1]] = value
    return tuple(keys)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override, validate. Local paths in the recipe resolve against the recipe's folder."""
    path = Path(path)
    data, node = read_yaml(path)
    setters: dict[tuple[str | int, ...], str] = {}  # keys -> the override that set them last, in the order set
    for assignment in overrides:
        try:
            keys = apply_override(data, assignment)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        setters.pop(keys, None)
        setters[keys] = assignment
    recipe = validate_as(Recipe, data, str(path), node, setters)
    base = path.resolve().parent
    model = recipe.model
    model.name_or_path = resolve_relative(model.name_or_path, base)
    model.tokenizer = resolve_relative(model.tokenizer, base)
    for block in [recipe.train.data] + [s.data for s in recipe.train.stages if s.data]:
        for _, _, spec in block.sources():
            if spec.source in LOCAL_FORMATS:
                spec.path = resolve_relative(spec.path, base)
            if spec.chat_template and spec.chat_template.endswith(".jinja"):
                spec.chat_template = resolve_relative(spec.chat_template, base)
    recipe.eval.suites = [resolve_relative(s, base) or s for s in recipe.eval.suites]
    _check_suites(recipe, path)
    return recipe


def check_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` validated again as a whole, suites included: an assignment in Python checks only its field, not the
    checks across fields (stage lengths, RoPE coverage). Errors name the field as loading a file does."""
    checked = validate_as(Recipe, recipe.model_dump(), "recipe")
    _check_suites(checked, "recipe")
    return checked


def _check_suites(recipe: Recipe, path: Path | str) -> None:
    """Every suite the recipe names exists and validates, and holds what ``eval.verdict`` checks, so a typo fails
    before hours of training."""
    for i, suite in enumerate(recipe.eval.suites):
        if Path(suite).is_dir():
            raise UserError(f"{path}: eval.suites[{i}]: {suite} is a folder, not a suite YAML file")
        if not Path(suite).is_file():
            raise UserError(f"{path}: eval.suites[{i}]: no such file: {suite}")
    loaded = load_suites(recipe.eval.suites, lambda i: f"{path}: eval.suites[{i}]")
    types = {suite.name: {task.key: task.type for task in suite.tasks} for suite in loaded}  # name -> key -> type
    verdict = recipe.eval.verdict
    if verdict is None:
        return
    suite, key = verdict.task.split("/", 1)
    if types.get(suite, {}).get(key) != "niah":
        found = ", ".join(f"{name}/{task}" for name, tasks in types.items() for task, kind in tasks.items()
                          if kind == "niah")
        raise UserError(f"{path}: eval.verdict.task: {verdict.task} is no niah task of eval.suites "
                        f"(theirs: {found or 'none'})")
    for i, name in enumerate(verdict.retention_suites):
        if name not in types:
            raise UserError(f"{path}: eval.verdict.retention_suites[{i}]: no suite named {name} in eval.suites "
                            f"(names: {', '.join(types) or 'none'})")


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (defaults filled in) as YAML."""
    write_text(Path(path), yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
