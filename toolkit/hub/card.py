"""The model card (README.md) of a pushed run: Hub metadata with model-index eval results, and a readable body.

Everything comes from the run folder: ``run_info.json`` (method, base model, stages with their RoPE),
``recipe.resolved.yaml`` (data), ``eval/<tag>/<suite>.json`` (scores; the last ``stage-<i>-<name>`` tag is the
final model, ``base`` the starting point) and the report files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from toolkit.errors import UserError
from toolkit.hub_ids import looks_local

STAGE_TAG = re.compile(r"^stage-(\d+)-(.+)$")
TASK_TYPE = "text-generation"


def build_card(run_dir: Path, repo_id: str, what: str | None = None) -> ModelCard:
    """The model card of ``run_dir`` as published to ``repo_id``; ``what`` as in ``push_run`` (adapter/merged/report)."""
    info = read_run_info(run_dir)
    lora = info.get("method") == "lora"
    model_name = repo_id.split("/")[-1]
    final_tag, final = final_eval(run_dir)
    base_model = info.get("base_model")
    data = ModelCardData(
        model_name=model_name,
        base_model=base_model if is_hub_id(base_model) else None,
        library_name="peft" if lora and what in (None, "adapter") else "transformers",
        pipeline_tag="text-generation",
        tags=_tags(info),
        datasets=_hub_datasets(run_dir) or None,
        eval_results=[result for suite in final.values() for result in eval_results(suite)] or None,
    )
    body = "\n\n".join([
        f"# {model_name}",
        _summary(info, repo_id, what),
        _results_section(run_dir, final_tag, final),
        _rope_section(info),
        _stages_section(info),
        _data_section(run_dir),
        _files_section(run_dir),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run_info.json`` of the run, or a UserError naming the file."""
    path = run_dir / "run_info.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (is {run_dir} a run folder written by `python -m toolkit train`?)")
    return json.loads(path.read_text())


def final_eval(run_dir: Path) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The tag of the last stage's evaluation and its suites ({suite name: eval JSON}); (None, {}) if none."""
    stages = [(int(m.group(1)), d.name) for d in _eval_dirs(run_dir) if (m := STAGE_TAG.match(d.name))]
    if not stages:
        return None, {}
    tag = max(stages)[1]
    return tag, read_suites(run_dir / "eval" / tag)


def read_suites(tag_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<suite>.json`` in one eval tag folder, keyed by suite name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(tag_dir.glob("*.json"))} if tag_dir.is_dir() else {}


def eval_results(suite: dict[str, Any]) -> list[EvalResult]:
    """model-index entries of one suite: needle grid mean, RULER effective length and per-length, lm-eval metrics."""
    results = []
    for task_name, task in suite.get("tasks", {}).items():
        for dataset, metrics in _task_metrics(task_name, task).items():
            results += [
                EvalResult(task_type=TASK_TYPE, task_name=task_name, dataset_type=dataset, dataset_name=dataset,
                           dataset_config=suite.get("suite"), metric_type=metric_type, metric_name=metric_name,
                           metric_value=value)
                for metric_type, metric_name, value in metrics if value is not None
            ]
    return results


def _task_metrics(task_name: str, task: dict[str, Any]) -> dict[str, list[tuple[str, str, Any]]]:
    """{dataset: [(metric type, readable name, value)]} of one task of an eval JSON."""
    kind = task.get("type")
    if kind == "niah":
        return {task_name: [("accuracy", "needle grid mean", _number(task.get("mean", task.get("score"))))]}
    if kind == "ruler":
        per_length = sorted(task.get("scores_by_length", {}).items(), key=lambda item: int(item[0]))
        return {task_name: [("accuracy", "mean score", _number(task.get("score"))),
                            ("effective_length", "RULER effective length (tokens)", task.get("effective_length"))]
                + [(f"accuracy@{length}", f"score at {length} tokens", _number(v)) for length, v in per_length]}
    if kind == "lm_eval":
        return {subtask: [(name.split(",")[0], name, _number(value)) for name, value in metrics.items()
                          if "stderr" not in name and isinstance(value, (int, float))]
                for subtask, metrics in task.get("metrics", {}).items()}
    return {task_name: [(kind or "score", f"{kind} score", _number(task.get("score")))]}


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` names a Hub model (``org/name``), not a local folder or a random init."""
    return bool(name) and not looks_local(name)


def _number(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def _eval_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "eval"
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def _final_stage(info: dict[str, Any]) -> dict[str, Any]:
    return (info.get("stages") or [{}])[-1]


def _tags(info: dict[str, Any]) -> list[str]:
    rope_type = _final_stage(info).get("rope_parameters", {}).get("rope_type")
    method = "lora" if info.get("method") == "lora" else "full-finetune"
    return ["long-context", "rope", "llama-3", method] + ([f"rope-{rope_type}"] if rope_type else [])


def _recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.resolved.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _stage_data(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    train = recipe.get("train", {})
    return [stage.get("data") or train.get("data") or {} for stage in train.get("stages", [])]


def _hub_datasets(run_dir: Path) -> list[str]:
    return sorted({d["path"] for d in _stage_data(_recipe(run_dir)) if d.get("source") == "hub" and d.get("path")})


def _summary(info: dict[str, Any], repo_id: str, what: str | None) -> str:
    base = info.get("base_model") or "a randomly initialised Llama"
    stages = info.get("stages") or []
    longest = max((s.get("seq_len", 0) for s in stages), default=0)
    method = "LoRA" if info.get("method") == "lora" else "full-parameter"
    if what == "report":
        content = "This repository holds the evaluation report only (no weights)."
    elif info.get("method") == "lora" and what != "merged":
        content = (f"This repository holds the LoRA adapter: `PeftModel.from_pretrained(base, \"{repo_id}\")` "
                   "on the base model loaded with this repository's `config.json` (it carries the new RoPE).")
    else:
        content = f"Load with `AutoModelForCausalLM.from_pretrained(\"{repo_id}\")`."
    return (f"`{base}` extended to {longest} tokens of context with {method} fine-tuning over {len(stages)} "
            f"stage(s) (recipe `{info.get('recipe', '?')}`), trained on {info.get('device', '?')} in "
            f"{info.get('precision', '?')} with {info.get('attention', '?')} attention. {content}")


def _results_section(run_dir: Path, final_tag: str | None, final: dict[str, dict[str, Any]]) -> str:
    if not final:
        return "## Results\n\nNo stage evaluation was recorded for this run."
    base = read_suites(run_dir / "eval" / "base")
    rows = ["| suite | task | type | base | final | details |", "|---|---|---|---|---|---|"]
    for suite_name, suite in final.items():
        for task_name, task in suite.get("tasks", {}).items():
            before = base.get(suite_name, {}).get("tasks", {}).get(task_name, {}).get("score")
            rows.append(f"| {suite_name} | {task_name} | {task.get('type')} | {_cell(before)} | "
                        f"{_cell(task.get('score'))} | {_details(task)} |")
    return f"## Results\n\nScores of the final model (eval tag `{final_tag}`) against the starting model.\n\n" + "\n".join(rows)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _details(task: dict[str, Any]) -> str:
    if task.get("type") == "ruler":
        lengths = ", ".join(f"{k}: {_cell(v)}" for k, v in sorted(task.get("scores_by_length", {}).items(),
                                                                   key=lambda item: int(item[0])))
        return f"effective length {task.get('effective_length') or '-'}; {lengths}"
    if task.get("type") == "niah":
        return f"grid mean {_cell(task.get('mean'))} over {len(task.get('grid', {}))} lengths"
    return ""


def _rope_section(info: dict[str, Any]) -> str:
    stage = _final_stage(info)
    rope = json.dumps(stage.get("rope_parameters", {}), sort_keys=True)
    return (f"## RoPE\n\n`config.json` carries `rope_parameters = {rope}` and "
            f"`max_position_embeddings = {stage.get('max_position_embeddings', '?')}`.")


def _stages_section(info: dict[str, Any]) -> str:
    rows = ["| # | stage | seq_len | rope type | theta | factor | steps |", "|---|---|---|---|---|---|---|"]
    for i, stage in enumerate(info.get("stages") or []):
        rope = stage.get("rope_parameters", {})
        rows.append(f"| {i} | {stage.get('name')} | {stage.get('seq_len')} | {rope.get('rope_type')} | "
                    f"{rope.get('rope_theta', '-')} | {rope.get('factor', '-')} | {stage.get('steps')} |")
    return "## Stages\n\n" + "\n".join(rows)


def _data_section(run_dir: Path) -> str:
    lines = []
    for i, data in enumerate(_stage_data(_recipe(run_dir))):
        source = data.get("source", "synthetic")
        what = f"task `{data.get('task', 'passkey')}`" if source == "synthetic" else f"`{data.get('path')}`"
        lines.append(f"- stage {i}: {source} {what}, packing `{data.get('packing', 'pack')}`")
    return "## Data\n\n" + ("\n".join(lines) or "See `recipe.resolved.yaml`.")


def _files_section(run_dir: Path) -> str:
    report = "[report.md](report.md) / [report.html](report.html)" if (run_dir / "report.md").is_file() else "-"
    return (f"## Report and reproduction\n\nFull report: {report}; raw evaluation results in `eval/`; the exact recipe "
            "in `recipe.resolved.yaml` and the environment in `run_info.json`. Made with the longctx toolkit "
            "(`python -m toolkit train <recipe>`).")
