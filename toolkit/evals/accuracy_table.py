"""The needle accuracies of an evaluation as one markdown table (printed by ``python -m toolkit eval``): a row per
needle grid and per zero-shot RoPE setting, a column per length, every cell with its 95% Wilson interval and n."""

from __future__ import annotations

from typing import Any

from toolkit.evals.stats import Rate, niah_rates
from toolkit.formatting.blocks import markdown_table


def _rows(suite: str, key: str, entry: dict[str, Any]) -> list[tuple[str, str, dict[int, Rate]]]:
    if entry.get("type") == "niah" and entry.get("grid"):
        return [(f"{suite}/{key}", "model's own", niah_rates(entry))]
    if entry.get("type") == "rope_compare":
        cells = entry.get("cells", [])
        return [(f"{suite}/{key}", name, niah_rates(setting, [c for c in cells if c.get("setting") == name]))
                for name, setting in (entry.get("settings") or {}).items()]
    return []


def accuracy_table(results: dict[str, dict[str, Any]]) -> str | None:
    """Markdown for ``{suite: results}`` (as ``run_suites_into`` returns); ``None`` without needle tasks."""
    rows = [row for suite, data in results.items() for key, entry in data["tasks"].items()
            for row in _rows(suite, key, entry)]
    if not rows:
        return None
    lengths = sorted({length for _, _, rates in rows for length in rates})
    return markdown_table(["task", "RoPE", *map(str, lengths)],
                          [[task, rope, *(rates[k].format() if k in rates else "" for k in lengths)]
                           for task, rope, rates in rows])
