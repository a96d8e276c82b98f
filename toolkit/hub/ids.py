"""Telling a Hugging Face Hub model id from a local path, without asking the Hub."""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""``name`` or ``org/name``, as the Hub spells ids."""


def looks_local(source: str) -> bool:
    """A path rather than a hub id: starts with ``.``, ``/`` or ``~``, exists here, or is not shaped like an id."""
    return source.startswith((".", "/", "~")) or Path(os.path.expanduser(source)).exists() or not HUB_ID.match(source)
