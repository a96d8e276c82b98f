"""Numbers as the report, the verdict, the model card and the task types show them, and a setting's value as messages
and the report show it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard


def is_number(value: Any) -> TypeGuard[int | float]:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value: Any) -> float | None:
    """``value`` as a float when it is a number, else ``None``."""
    return float(value) if is_number(value) else None


def rounded(value: Any, digits: int = 4) -> float | None:
    """``value`` as a float rounded to ``digits`` (``None`` stays ``None``)."""
    return None if value is None else round(float(value), digits)


def fmt(value: Any, digits: int = 3) -> str:
    """``-`` for ``None``, a float with ``digits`` decimals, anything else as ``str``."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def with_interval(value: float, interval: Sequence[float] | None, digits: int = 3, signed: bool = False) -> str:
    """``0.970 [0.920, 0.990]``: ``value`` and its interval with ``digits`` decimals (``signed``: each with its sign, as
    a difference, ``+0.200 [-0.010, +0.390]``); the value alone without one. A value that rounds to zero reads as zero,
    never ``-0.00``."""
    form = f"{'+' if signed else ''}z.{digits}f"

    def shown(number: float) -> str:
        return f"{number:{form}}"

    return f"{shown(value)} [{shown(interval[0])}, {shown(interval[1])}]" if interval else shown(value)


def score_with_interval(scores: Mapping[str, Any], key: str) -> str:
    """A recorded score ``scores[key]`` with its 95% interval ``scores[key + "_ci"]`` where there is one; ``-``
    where the score is missing or undefined."""
    value = scores.get(key)
    return "-" if value is None else with_interval(value, scores.get(f"{key}_ci"))


def setting_value(value: Any) -> str:
    """A recipe setting's value in a message: ``unset`` for None, a string quoted, a mapping or list as JSON, anything
    else as ``str``."""
    if value is None:
        return "unset"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
