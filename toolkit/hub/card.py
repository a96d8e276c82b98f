"""The model card (README.md) of a pushed run: Hub metadata with model-index eval results, and a readable body.

Everything comes from the run folder: ``run_info.json`` (method, base model, stages with their RoPE),
``recipe.resolved.yaml`` (data), ``eval/<tag>/<suite>.json`` (scores; the last ``stage-<i>-<name>`` tag is the
final model, ``base`` the starting point) and the report files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from toolkit.evals.registry import card_detail, card_metrics
from toolkit.evals.run_results import read_run
from toolkit.formatting.blocks import markdown_table
from toolkit.formatting.numbers import fmt, number
from toolkit.hub.ids import looks_local
from toolkit.recipe.data_spec import DataSpec
from toolkit.run_folder import (
    RECIPE,
    REPORT_HTML,
    REPORT_MD,
    RUN_INFO,
    Run,
    RunInfo,
    StageInfo,
    final_stage_tag,
)

TASK_TYPE = "text-generation"


def build_card(run_dir: Path, repo_id: str, what: str | None = None) -> ModelCard:
    """The model card of ``run_dir`` as published to ``repo_id``; ``what`` as in ``push_run``
    (adapter/merged/report)."""
    run = read_run(run_dir, info_required=True)
    info, recipe = run.info, run.recipe
    stage_data = [recipe.train.stage_data(i) for i in range(len(recipe.train.stages))] if recipe else []
    lora = info.method == "lora"
    model_name = repo_id.split("/")[-1]
    final_tag, final = final_eval(run)
    base_model = info.base_model
    data = ModelCardData(
        model_name=model_name,
        base_model=base_model if is_hub_id(base_model) else None,
        library_name="peft" if lora and what in (None, "adapter") else "transformers",
        pipeline_tag=TASK_TYPE,
        tags=_tags(info),
        datasets=_hub_datasets(stage_data) or None,
        eval_results=[result for suite in final.values() for result in eval_results(suite)] or None,
    )
    body = "\n\n".join([
        f"# {model_name}",
        _summary(info, repo_id, what),
        _results_section(run, final_tag, final),
        _rope_section(info),
        _stages_section(info),
        _data_section(stage_data),
        _files_section(run_dir),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def final_eval(run: Run) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The tag of the last stage's evaluation and its suites ({suite name: eval JSON}); (None, {}) if none."""
    tag = final_stage_tag(run.tags)
    return (tag, run.evals[tag]) if tag else (None, {})


def eval_results(suite: dict[str, Any]) -> list[EvalResult]:
    """model-index entries of one suite: needle grid mean, RULER effective length and per-length, lm-eval metrics."""
    results = []
    for task_name, task in suite.get("tasks", {}).items():
        for dataset, metrics in card_metrics(task_name, task).items():
            results += [
                EvalResult(task_type=TASK_TYPE, task_name=task_name, dataset_type=dataset, dataset_name=dataset,
                           dataset_config=suite.get("suite"), metric_type=metric_type, metric_name=metric_name,
                           metric_value=value)
                for metric_type, metric_name, value in metrics if value is not None
            ]
    return results


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` names a Hub model (``org/name``), not a local folder or a random init."""
    return bool(name and not looks_local(name))


def _final_stage(info: RunInfo) -> StageInfo:
    return (info.stages or [StageInfo()])[-1]


def _tags(info: RunInfo) -> list[str]:
    rope_type = (_final_stage(info).rope_parameters or {}).get("rope_type")
    method = "lora" if info.method == "lora" else "full-finetune"
    return ["long-context", "rope", "llama-3", method] + ([f"rope-{rope_type}"] if rope_type else [])


def _hub_datasets(stage_data: list[DataSpec]) -> list[str]:
    return sorted({s.path for data in stage_data for _, _, s in data.sources() if s.source == "hub" and s.path})


def _summary(info: RunInfo, repo_id: str, what: str | None) -> str:
    base = info.base_model or "a randomly initialised Llama"
    stages = info.stages
    longest = max((s.seq_len or 0 for s in stages), default=0)
    method = "LoRA" if info.method == "lora" else "full-parameter"
    if what == "report":
        content = "This repository holds the evaluation report only (no weights)."
    elif info.method == "lora" and what != "merged":
        content = (f"This repository holds the LoRA adapter: `PeftModel.from_pretrained(base, \"{repo_id}\")` "
                   "on the base model loaded with this repository's `config.json` (it carries the new RoPE).")
    else:
        content = f"Load with `AutoModelForCausalLM.from_pretrained(\"{repo_id}\")`."
    return (f"`{base}` extended to {longest} tokens of context with {method} fine-tuning over {len(stages)} "
            f"stage(s) (recipe `{info.recipe or '?'}`), trained on {info.device or '?'} in "
            f"{info.precision or '?'} with {info.attention or '?'} attention. {content}")


def _results_section(run: Run, final_tag: str | None, final: dict[str, dict[str, Any]]) -> str:
    if not final:
        return "## Results\n\nNo stage evaluation was recorded for this run."
    reference = run.compared  # as the report compares: the model before context extension
    rows = []
    for suite_name, suite in final.items():
        for task_name, task in suite.get("tasks", {}).items():
            before = (run.entry(reference, suite_name, task_name) or {}).get("score") if reference else None
            rows.append([suite_name, task_name, str(task.get("type")), _cell(before), _cell(task.get("score")),
                         card_detail(task)])
    before = f"the model before context extension (eval tag `{reference}`)" if reference else "no earlier evaluation"
    intro = f"## Results\n\nScores of the final model (eval tag `{final_tag}`) against {before}.\n\n"
    return intro + markdown_table(["suite", "task", "type", "before", "final", "details"], rows)


def _cell(value: Any) -> str:
    return fmt(number(value))


def _rope_section(info: RunInfo) -> str:
    stage = _final_stage(info)
    rope = json.dumps(stage.rope_parameters or {}, sort_keys=True)
    return (f"## RoPE\n\n`config.json` carries `rope_parameters = {rope}` and "
            f"`max_position_embeddings = {stage.max_position_embeddings or '?'}`.")


def _stages_section(info: RunInfo) -> str:
    rows = []
    for i, stage in enumerate(info.stages):
        rope = stage.rope_parameters or {}
        rows.append([str(i), str(stage.name), str(stage.seq_len), str(rope.get("rope_type")),
                     str(rope.get("rope_theta", "-")), str(rope.get("factor", "-")), str(stage.steps)])
    return "## Stages\n\n" + markdown_table(["#", "stage", "seq_len", "rope type", "theta", "factor", "steps"], rows)


def _data_section(stage_data: list[DataSpec]) -> str:
    lines = []
    for i, data in enumerate(stage_data):
        parts = [f"{s.source} " + (f"task `{s.task}`" if s.source == "synthetic" else f"`{s.path}`")
                 + ("" if data.mixture is None else f" ({weight:.0%})") for _, weight, s in data.sources()]
        lines.append(f"- stage {i}: {', '.join(parts)}, packing `{data.packing}`")
    return "## Data\n\n" + ("\n".join(lines) or f"See `{RECIPE}`.")


def _files_section(run_dir: Path) -> str:
    report = f"[{REPORT_MD}]({REPORT_MD}) / [{REPORT_HTML}]({REPORT_HTML})" if (run_dir / REPORT_MD).is_file() else "-"
    return (f"## Report and reproduction\n\nFull report: {report}; raw evaluation results in `eval/`; the exact recipe "
            f"in `{RECIPE}` and the environment in `{RUN_INFO}`. Made with the longctx toolkit "
            "(`python -m toolkit train <recipe>`).")
