"""Where outputs go: locations checked before any expensive step (without creating anything), and files and folders
written beside their target and renamed over it at the end, so a crash never leaves half of one (and files written
together replace theirs only once all are written: a failed write keeps the old ones)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from toolkit.errors import UserError


def check_writable(folder: Path, label: str) -> None:
    """A :class:`UserError` naming ``label`` unless ``folder`` is, or can be made, a folder to write in: its nearest
    existing ancestor (or itself) is a folder where a file can be created."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{label}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"{label}: cannot write in {existing} ({exc.strerror or exc})") from None


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a sibling temporary path to write; it replaces ``path`` once the block has finished, and is removed
    when the block fails; a UserError before it when ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, where a file is to be written (move it away)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_files(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """:func:`atomic_file` for files that belong together: yield a temporary path for each of ``paths``; once the
    block has finished (every file written) they replace theirs, one rename after another; when the block fails,
    all are removed and every old file is kept."""
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_file(path)) for path in paths]


def write_text(path: Path, text: str) -> Path:
    """``text`` written to ``path`` (UTF-8) through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


MADE_FROM = "source.json"
"""Written last into a folder made from pinned packages (the small model, the corpus): what it was made from; the
folder is complete when present."""


def check_made_here(out_dir: Path, what: str) -> None:
    """A :class:`UserError` when ``out_dir`` holds files but no :data:`MADE_FROM`: making ``what`` there would replace
    them (its folder is replaced whole)."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MADE_FROM).is_file():
        raise UserError(f"{out_dir}: holds files but no {what} made here (no {MADE_FROM}), and the {what} folder would "
                        "replace them; name a new or empty folder")


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a sibling temporary folder that replaces ``out_dir`` only once the block has finished (the old folder
    is moved aside first and removed last); the temporary folder is removed when the block fails. A link to a folder
    stays a link: the folder it names is replaced."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out_dir, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _sibling(out_dir, "old")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
