"""Numbers as the report, the verdict, the model card and the task types show them."""

from __future__ import annotations

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
