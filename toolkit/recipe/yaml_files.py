"""Reading YAML files into typed pydantic objects, with every failure one line naming the file, line and field.

Shared by recipes (``toolkit.recipe.loading``) and evaluation suites (``toolkit.evals.suite``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.errors import UserError
from toolkit.file_reading import read_text
from toolkit.recipe.strict import FieldError

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
"""A mapping key a path shows after a dot; any other is quoted in brackets."""
_STEP = re.compile(rf'(?:^|\.)(?:(-?\d+)(?=$|[.\[])|({_PLAIN_KEY.pattern}))|\[(-?\d+)\]|\["([^"\\]*)"\]')
"""One step of a key path: ``.1`` or ``[1]`` (an index), ``.key``, or ``["0.5"]`` (a key that is no plain word)."""
Model = TypeVar("Model", bound=BaseModel)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], yaml.Node]:
    """Parse a YAML mapping and keep its node tree (for line numbers). Errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a YAML file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    text = read_text(path)
    try:  # composed apart from loading, which rewrites the tree it builds from (merge keys)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    if data is None or node is None:  # no document: compose gives no node exactly when the text holds none
        raise UserError(f"{path}: file is empty")
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: expected a mapping of keys at the top level, got {type(data).__name__}")
    _refuse_repeated_keys(path, node, [], set())
    return data, node


def _refuse_repeated_keys(path: Path, node: yaml.Node, loc: list[Any], seen: set[int]) -> None:
    """A UserError naming the file, line and key where a mapping gives a key twice (YAML keeps the last silently)."""
    if id(node) in seen:  # an alias: that node was walked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in lines:
                    raise UserError(f"{path}:{key.start_mark.line + 1}: {format_loc([*loc, key.value])}: given twice "
                                    f"(first on line {lines[key.value]}); YAML would keep only the last")
                lines[key.value] = key.start_mark.line + 1
            _refuse_repeated_keys(path, value, [*loc, key.value], seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_repeated_keys(path, item, [*loc, index], seen)


def parse_path(dotted: str) -> list[str | int]:
    """``train.stages[1].seq_len`` (or ``train.stages.1.seq_len``) -> ``["train", "stages", 1, "seq_len"]``; a key
    with a dot or other signs quoted in brackets, as :func:`format_loc` shows it: ``grid.8["0.5"]``."""
    keys: list[str | int] = []
    pos = 0
    while pos < len(dotted) or not keys:
        step = _STEP.match(dotted, pos)
        if step is None or dotted.startswith("."):
            raise UserError(f"override {dotted!r}: cannot read key at {dotted[pos:]!r}")
        number, name, index, quoted = step.groups()
        keys.append(name or quoted if number is None and index is None else int(number or index))
        pos = step.end()
    return keys


def key_step(key: str, first: bool = False) -> str:
    """A mapping key as a step of a shown path: ``.key`` (``key`` when ``first``), or ``["0.5"]`` where it holds
    anything but letters, digits, ``_`` and ``-`` (a dot would read as two steps)."""
    if _PLAIN_KEY.fullmatch(key):
        return key if first else f".{key}"
    return f"[{json.dumps(key, ensure_ascii=False)}]"


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """A field's path: list indices in brackets, mapping keys after dots, quoted where they are no plain word
    (:func:`key_step`): ``tasks.passkey.grid.8["0.5"]``."""
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else key_step(str(key), first=not out)
    return out


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """1-based line of the deepest node of ``loc`` that exists in the YAML tree."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == key), None)
            if match is None:
                hit = next((k for k, _ in node.value if k.value == key), None)
                return hit.start_mark.line + 1 if hit else line
            line, node = match.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and -len(node.value) <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def validation_message(exc: ValidationError, source: str, node: yaml.Node | None = None, prefix: tuple = (),
                       overrides: Mapping[tuple[str | int, ...], str] | None = None) -> str:
    """The first pydantic error as ``file:line: field.path: message``, or ``file: override 'key=value': field.path:
    message`` where the field is one an override (keys -> its text) set or lies within it; other errors of an
    overridden recipe name the overrides after the line."""
    err = exc.errors()[0]
    loc = list(prefix) + [k for k in err["loc"] if not (isinstance(k, str) and k.startswith("function-"))]
    cause = (err.get("ctx") or {}).get("error")
    message = str(cause) if cause is not None else err["msg"]
    if isinstance(cause, FieldError):
        loc = loc + (parse_path(cause.path) if isinstance(cause.path, str) else list(cause.path))
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    line = _line_of(node, loc)
    where = f"{source}:{line}" if line else source
    setting = [text for keys, text in (overrides or {}).items() if tuple(loc[:len(keys)]) == keys]
    if setting:
        where = f"{source}: override {setting[-1]!r}"
    elif overrides:  # a check across fields, or a field the overrides left: the values checked are the overridden ones
        where += f" (with override{'s' if len(overrides) > 1 else ''} {', '.join(map(repr, overrides.values()))})"
    field = format_loc(loc)
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def validate_as(model: type[Model], data: dict[str, Any], source: str, node: yaml.Node | None = None,
                overrides: Mapping[tuple[str | int, ...], str] | None = None) -> Model:
    """Validate ``data`` as ``model``; a failure is a one-line :class:`UserError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_message(exc, source, node, overrides=overrides)) from None


def resolve_relative(value: str | None, base: Path) -> str | None:
    """A path relative to the recipe's folder, when it exists there; hub ids, absolute paths (``~`` expanded, as a
    shell does) and paths that exist in the working folder stay. A path written relative (``./``, ``../``) that is
    in neither place is named beside the recipe, where the docs say such paths are read, so the error about it points
    where it was looked for."""
    if value is None:
        return None
    if Path(os.path.expanduser(value)).is_absolute():  # os.path's expanduser leaves an unknown ~user as it is
        return os.path.expanduser(value)
    candidate = base / value
    if candidate.exists():
        return str(candidate)
    if value.startswith(("./", "../")) and not Path(value).exists():
        return os.path.normpath(candidate)
    return value
