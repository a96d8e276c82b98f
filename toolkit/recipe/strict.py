"""The base of every recipe block (:class:`Strict`) and the error a block's validator raises about one of its
fields (:class:`FieldError`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""What a name that becomes a file or folder name may hold (recipes, suites, tasks, judges): no path separators, no
leading dot or dash."""
SEED_LIMIT = 2**32
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]
"""A random seed as every generator takes it (numpy's, which accelerate's ``set_seed`` seeds too, is the narrowest)."""


class FieldError(ValueError):
    """A validation error about a field below the block that raised it; ``path`` is relative to that block."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class Strict(BaseModel):
    """Base for every block: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def changed(spec: BaseModel, key: str) -> bool:
    """Whether ``key`` differs from its default (a resolved recipe writes every field, defaults included)."""
    return bool(getattr(spec, key) != type(spec).model_fields[key].get_default(call_default_factory=True))
