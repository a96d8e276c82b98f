"""Zero-shot RoPE comparison: the SAME weights scored on the needle grid under several RoPE settings.

Evidence that the needle task discriminates between extension methods (no scaling, linear, dynamic NTK,
YaRN, ...) before any fine-tuning. Each setting goes through ``toolkit.model.rope`` (config + rotary modules
rebuilt in place); the model's own RoPE is restored afterwards, also on error.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from toolkit.evals.context import EvalContext
from toolkit.evals.niah import Cell, grid_summary, score_grid
from toolkit.evals.plots import score_vs_length
from toolkit.evals.results import SuiteResults
from toolkit.evals.suite import RopeCompareTask
from toolkit.model.loading import native_length_of
from toolkit.model.lora import unwrap_peft
from toolkit.model.rope import use_rope


def _tagged(cells: list[Cell], setting: str) -> list[Cell]:
    return [{**cell, "setting": setting} for cell in cells]


def _record_setting(results: SuiteResults, task: RopeCompareTask, others: list[Cell], setting: str,
                    done: list[Cell]) -> dict[str, Any]:
    """Save the cells of the other settings and those of ``setting`` done so far."""
    return results.record(task, others + _tagged(done, setting))


def run_rope_compare(task: RopeCompareTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    native = task.native_length or native_length_of(unwrap_peft(ctx.model).config)
    seq_len = max(task.lengths)
    cells = results.cells(task)
    settings: dict[str, dict[str, Any]] = {}
    for name, spec in task.settings.items():
        # restored after each setting, so every one derives from the model's own RoPE (theta included)
        with use_rope(ctx.model, spec, seq_len, native) as switch:
            others = [c for c in cells if c["setting"] != name]
            mine = score_grid(task, ctx, [c for c in cells if c["setting"] == name],
                              partial(_record_setting, results, task, others, name), label=f" {name}")
        cells = others + _tagged(mine, name)
        settings[name] = {"rope_parameters": switch.applied.parameters, **grid_summary(mine, task.lengths, task.depths)}
    best = max(settings, key=lambda name: settings[name]["score"])
    score_vs_length({name: s["scores_by_length"] for name, s in settings.items()},
                    f"{ctx.model_name} [{ctx.folder.name}] {task.key}: zero-shot RoPE settings (native {native})",
                    ctx.plot_path(task.key))
    summary = {"score": None, "native_length": native, "best": best, "settings": settings}
    return results.record(task, cells, summary)
