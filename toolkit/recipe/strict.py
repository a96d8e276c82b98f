"""The base of every recipe block and suite task (:class:`Strict`) and the error a block's validator raises about one
of its fields (:class:`FieldError`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""What a name that becomes a file or folder name may hold (recipes, suites, tasks, judges): no path separators, no
leading dot or dash."""
SEED_LIMIT = 2**32
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]
"""A random seed as every generator takes it (numpy's, which accelerate's ``set_seed`` seeds too, is the narrowest)."""


class FieldError(ValueError):
    """A validation error about a field below the block that raised it; ``path`` is relative to that block, dotted
    (``stages[1].seq_len``) or as its keys."""

    def __init__(self, path: str | tuple[str, ...], message: str):
        super().__init__(message)
        self.path = path


class Strict(BaseModel):
    """Base for every block: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """An unknown key is named before any field is checked: a misspelt required key would otherwise read as that
        key missing, the typo unsaid."""
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise FieldError((str(key),), unknown_key(str(key), cls.model_fields))
        return data


def unknown_key(key: str, known: Iterable[str]) -> str:
    """``unknown key``, with the known key ``key`` most resembles: ``unknown key (did you mean lengths?)``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def changed(spec: BaseModel, key: str) -> bool:
    """Whether ``key`` differs from its default (a resolved recipe writes every field, defaults included)."""
    return bool(getattr(spec, key) != type(spec).model_fields[key].get_default(call_default_factory=True))
