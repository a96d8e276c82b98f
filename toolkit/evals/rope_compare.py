"""Zero-shot RoPE comparison: the SAME weights scored on the needle grid under several RoPE settings.

Evidence that the needle task discriminates between extension methods (no scaling, linear, dynamic NTK,
YaRN, ...) before any fine-tuning. Each setting goes through ``toolkit.model.rope`` (config + rotary modules
rebuilt in place); the model's own RoPE is restored afterwards, also on error. The grid is scored by ``niah``'s
runner through the backend; switching RoPE needs the transformers model itself (``EvalContext.model``: a GGUF file
fixes its RoPE when exported). The report tabulates each setting's needle accuracy per tag.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, ClassVar, Literal, Required

from pydantic import Field, PositiveInt, with_config
from typing_extensions import TypedDict

from toolkit.evals.context import EvalContext
from toolkit.evals.niah import Cell, check_needle_prompts, grid_summary, score_grid
from toolkit.evals.plots import score_vs_length
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import NeedleGrid
from toolkit.evals.stats import niah_overall
from toolkit.evals.task_type import Entry, TaskType, complete_found
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Paragraph, Table
from toolkit.recipe.schema import RopeSpec
from toolkit.run_folder import Run


class RopeCompareTask(NeedleGrid):
    """The same model evaluated zero-shot under several RoPE settings (which extension works untrained)."""

    type: Literal["rope_compare"]
    settings: dict[str, RopeSpec] = Field(min_length=1)
    """Name -> RoPE setting, e.g. ``{none: {type: default}, yarn: {type: yarn, factor: 4}}``."""
    native_length: PositiveInt | None = None
    """The context the model was trained at; ``None`` takes ``config.max_position_embeddings``."""
    version: ClassVar[int] = 2
    """2: ``dynamic`` with a factor other than length / native rescales from the native length on (it started at
    length / factor)."""


@with_config(SHAPE_CONFIG)
class RopeSetting(TypedDict, total=False):
    """One setting of a finished rope_compare entry: its needle grid (``niah.grid_summary``) and RoPE."""

    score: Required[float]
    scores_by_length: Required[dict[str, float]]
    rope_parameters: Required[dict[str, Any]]
    n_by_length: dict[str, int]
    correct_by_length: dict[str, int]
    n: int
    correct: int


@with_config(SHAPE_CONFIG)
class RopeCompareEntry(TypedDict, total=False):
    """A finished rope_compare entry (:func:`run_rope_compare`) as its readers take it."""

    settings: Required[dict[str, RopeSetting]]
    best: str
    native_length: int


def _tagged(cells: list[Cell], setting: str, rope_length: int) -> list[Cell]:
    """``cells`` marked with their setting and the length its RoPE was derived for (the longest of ``lengths``:
    ``theta: auto`` and a factor left out depend on it, so a cell scored for another is scored again)."""
    return [{**cell, "setting": setting, "rope_length": rope_length} for cell in cells]


def _record_setting(results: SuiteResults, task: RopeCompareTask, others: list[Cell], setting: str,
                    rope_length: int, done: list[Cell]) -> dict[str, Any]:
    """Save the cells of the other settings and those of ``setting`` done so far."""
    return results.record(task, others + _tagged(done, setting, rope_length))


def run_rope_compare(task: RopeCompareTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    # imported here: transformers and peft load only when a comparison runs, not with every suite or report
    from toolkit.model.lora import unwrap_peft
    from toolkit.model.rope import use_rope
    from toolkit.model.rope_methods import native_length_of

    native = task.native_length or native_length_of(unwrap_peft(ctx.model).config)
    seq_len = max(task.lengths)
    cells = results.cells(task)
    settings: dict[str, dict[str, Any]] = {}
    for name, spec in task.settings.items():
        # restored after each setting, so every one derives from the model's own RoPE (theta included)
        with use_rope(ctx.model, spec, seq_len, native) as switch:
            others = [c for c in cells if c["setting"] != name]
            mine = score_grid(task, ctx, [c for c in cells if c["setting"] == name and c.get("rope_length") == seq_len],
                              partial(_record_setting, results, task, others, name, seq_len), label=f" {name}")
        cells = others + _tagged(mine, name, seq_len)
        settings[name] = {"rope_parameters": switch.applied.parameters, **grid_summary(mine, task)}
    best = max(settings, key=lambda name: settings[name]["score"])
    score_vs_length({name: s["scores_by_length"] for name, s in settings.items()},
                    f"{ctx.model_name} [{ctx.folder.name}] {task.key}: zero-shot RoPE settings (native {native})",
                    ctx.plot_path(task.key))
    summary = {"score": None, "native_length": native, "best": best, "settings": settings}
    return results.record(task, cells, summary)


def rope_headline(entry: Entry) -> str | None:
    if not entry.get("settings"):
        return None
    return f"best {entry.get('best')}: " + ", ".join(f"{n} {s['score']:.2f}" for n, s in entry["settings"].items())


def _setting_cell(entry: Entry, name: str) -> str:
    setting = entry["settings"].get(name)
    if not setting:
        return "-"
    rate = niah_overall(setting, [c for c in entry.get("cells", []) if c.get("setting") == name])
    return rate.format() if rate is not None else "-"


def rope_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("rope_compare"):
        found = complete_found(run, suite, task)
        if not found:
            continue
        names = list(dict.fromkeys(name for _, e in found for name in e["settings"]))
        rows = [[name, *(_setting_cell(e, name) for _, e in found),
                 json.dumps(next(e["settings"][name]["rope_parameters"] for _, e in found if name in e["settings"]),
                            separators=(",", ":"))] for name in names]
        lengths = sorted({int(n) for _, e in found for s in e["settings"].values() for n in s["scores_by_length"]})
        blocks += [Paragraph(f"{suite}/{task}: needle accuracy at {', '.join(map(str, lengths))} tokens (95% Wilson "
                             f"interval, n prompts), native length {found[-1][1].get('native_length')}, no "
                             "fine-tuning for the setting."),
                   Table(["RoPE setting", *(tag for tag, _ in found), "parameters"], rows)]
    return [Heading("Zero-shot RoPE comparison"), *blocks] if blocks else []


TASK_TYPE = TaskType(RopeCompareTask, run_rope_compare, headline=rope_headline, section=rope_section, rank=30,
                     check_prompts=check_needle_prompts, entry=RopeCompareEntry)
