"""Read a recipe YAML, apply dotted ``key=value`` overrides, validate into a typed :class:`Recipe`.

Every failure becomes a :class:`UserError` whose one line names the file, line and field path, e.g.
``recipes/x.yaml:14: train.stages[1].seq_len: Input should be greater than 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from toolkit.data.local_files import LOCAL_FORMATS
from toolkit.errors import UserError
from toolkit.evals.specs import NeedleGrid
from toolkit.evals.suite import Suite, load_suites
from toolkit.output_paths import write_text
from toolkit.recipe.schema import LoraSpec, Recipe
from toolkit.recipe.yaml_files import parse_path, read_yaml, resolve_relative, validate_as
from toolkit.run_folder import recipe_evaluations, verdict_lengths, verdict_models


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
    _check_to_run(recipe, path)
    return recipe


def _check_to_run(recipe: Recipe, path: Path | str) -> None:
    """What a recipe to run is checked for beyond its schema: its method's settings and its suites."""
    _check_method(recipe, path)
    _check_suites(recipe, path)


def _check_method(recipe: Recipe, path: Path | str) -> None:
    """LoRA settings in a full fine-tune would be ignored: refused in a recipe to run (a run folder's recorded recipe
    is read as it was written)."""
    method = recipe.method
    if method.kind == "full" and method.lora != LoraSpec():
        raise UserError(f"{path}: method.lora: LoRA settings, but method.kind is full (set method.kind: lora, or drop "
                        "them)")
    if method.kind == "full" and method.merge_on_save:
        raise UserError(f"{path}: method.merge_on_save: merges a LoRA adapter, but method.kind is full")


def check_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` checked again as a whole, as :func:`load_recipe` checks it: an assignment in Python checks only its
    field, not the checks across fields (stage lengths, RoPE coverage) or the suites. Errors name the field as loading
    a file does."""
    checked = validate_as(Recipe, recipe.model_dump(), "recipe")
    _check_to_run(checked, "recipe")
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
    check_verdict_evaluations(recipe, loaded, recipe.model.stated_native_length(), f"{path}: ")


def check_verdict_evaluations(recipe: Recipe, suites: Sequence[Suite], native: int | None, where: str = "") -> None:
    """The evaluations the recipe runs hold all ``eval.verdict`` reads (``toolkit.run_folder.verdict_models`` and
    ``verdict_lengths``, which the verdict computes from): an evaluation before extension and the final model's, and
    every length it looks up in the verdict task's grid (of ``suites``, the recipe's loaded; every evaluation runs the
    same grid). ``native``: the model's native length, ``None`` where not known yet (then only the last stage's length
    is checked). A UserError naming the field, after ``where`` (the recipe file)."""
    verdict, stages = recipe.eval.verdict, recipe.train.stages
    if verdict is None:
        return
    suite, key = verdict.task.split("/", 1)
    grid = next((task.lengths for found in suites if found.name == suite for task in found.tasks
                 if task.key == key and isinstance(task, NeedleGrid)), None)
    if grid is None:
        return  # no such needle task: _check_suites says so
    lengths = [stage.seq_len for stage in stages]
    if native is not None:
        if verdict_models(recipe_evaluations(recipe), native, lengths) is None:
            raise UserError(f"{where}eval.verdict: {_no_comparison(recipe, native)}")
    for need in verdict_lengths(verdict, native, lengths[-1]):
        if need.length not in grid:
            raise UserError(f"{where}{need.field}: {verdict.task} has no length {need.length} (grid: "
                            f"{', '.join(map(str, sorted(grid)))}), {need.what}")


def check_verdict_at_native(recipe: Recipe, native: int) -> None:
    """:func:`check_verdict_evaluations` at the model's ``native`` length, where the check of the recipe as a whole
    (:func:`load_recipe`, :func:`check_recipe`) did not know that length (:meth:`ModelSpec.stated_native_length`):
    only then are the suites read again."""
    if recipe.eval.verdict is not None and native != recipe.model.stated_native_length():
        check_verdict_evaluations(recipe, load_suites(recipe.eval.suites, lambda i: f"eval.suites[{i}]"), native)


def _no_comparison(recipe: Recipe, native: int) -> str:
    """Why the recipe evaluates no model before extension and after it, naming the fields that turned it off."""
    stages = recipe.train.stages
    if stages[-1].seq_len <= native:
        return (f"no stage extends the context: the last stage's seq_len {stages[-1].seq_len} is within the native "
                f"length {native}, so there is no model before extension to compare with")
    off = [] if recipe.evaluates(None) else ["eval.before: false"]
    for i, stage in enumerate(stages):
        if stage.seq_len <= native and not recipe.evaluates(i):
            off.append(f"train.stages[{i}].evaluate: false" if stage.evaluate is not None
                       else "eval.after_each_stage: false")
    return f"no evaluation of the model before extension ({', '.join(dict.fromkeys(off))})"


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (defaults filled in) as YAML."""
    write_text(Path(path), yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
