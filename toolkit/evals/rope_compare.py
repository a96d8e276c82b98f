"""Zero-shot RoPE comparison: the SAME weights scored on the needle grid under several RoPE settings.

Evidence that the needle task discriminates between extension methods (no scaling, linear, dynamic NTK,
YaRN, ...) before any fine-tuning. Each setting goes through ``toolkit.rope`` (config + rotary modules
rebuilt in place); the model's own RoPE is restored afterwards, also on error.
"""

from __future__ import annotations

from typing import Any

from toolkit.evals.context import EvalContext
from toolkit.evals.niah import Cell, grid_summary, score_grid
from toolkit.evals.plots import score_vs_length
from toolkit.evals.results import SuiteResults
from toolkit.evals.suite import RopeCompareTask
from toolkit.modeling import native_length_of
from toolkit.rope import apply_rope, rope_parameters


def _config(model):
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).config


def _tagged(cells: list[Cell], setting: str) -> list[Cell]:
    return [{**cell, "setting": setting} for cell in cells]


def run_rope_compare(task: RopeCompareTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    config = _config(ctx.model)
    original, original_max = dict(config.rope_parameters), config.max_position_embeddings
    if original.get("rope_type") == "dynamic":  # apply_rope divides a dynamic model's length by its factor
        original_max = round(original_max * original["factor"])
    native = task.native_length or native_length_of(config)
    seq_len = max(task.lengths)
    cells = results.cells(task)
    # every setting derives from the model's own RoPE (theta included), not from the one applied before it
    all_params = {name: rope_parameters(spec, seq_len, config, native) for name, spec in task.settings.items()}
    settings: dict[str, dict[str, Any]] = {}
    try:
        for name, params in all_params.items():
            apply_rope(ctx.model, params, max(seq_len, native))
            others = [c for c in cells if c["setting"] != name]
            mine = score_grid(task, ctx, [c for c in cells if c["setting"] == name],
                              lambda done: results.record(task, others + _tagged(done, name)), label=f" {name}")
            cells = others + _tagged(mine, name)
            settings[name] = {"rope_parameters": params, **grid_summary(mine, task.lengths, task.depths)}
    finally:
        apply_rope(ctx.model, original, original_max)
    best = max(settings, key=lambda name: settings[name]["score"])
    score_vs_length({name: s["scores_by_length"] for name, s in settings.items()},
                    f"{ctx.model_name} [{ctx.folder.name}] {task.key}: zero-shot RoPE settings (native {native})",
                    ctx.plot_path(task.key))
    summary = {"score": None, "native_length": native, "best": best, "settings": settings}
    return results.record(task, cells, summary)
