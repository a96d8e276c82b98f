"""Output locations checked before any expensive step, without creating anything."""

from __future__ import annotations

import tempfile
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
