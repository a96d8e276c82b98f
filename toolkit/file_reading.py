"""Reading files: the user's text and JSON objects, every failure one line naming the file (and line), and a file's
SHA-256 read in blocks (model files are hundreds of MB)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from toolkit.errors import UserError

SHAPE_CONFIG = ConfigDict(extra="allow", strict=True)
"""The config of the shapes of what a run folder's files hold (metrics rows, results files, each task type's entry):
other keys kept, every field of its own type (no ``"0.5"`` for a number)."""


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; a :class:`UserError` naming the file when it is not UTF-8 or cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def json_object(text: str, path: Path, line: int | None = None) -> dict[str, Any]:
    """``text`` (the whole of ``path``, or its line ``line``) read as one JSON object; a :class:`UserError` naming the
    file and line when it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{line or exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}:{line or 1}: expected a JSON object, got {type(data).__name__}")
    return data


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a model folder's ``config.json``, ``run_info.json``, ...), errors naming it."""
    return json_object(read_text(path), path)


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
