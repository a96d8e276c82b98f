"""Section 3 of ``benchmarks/gpu_check.py``: the DeepSpeed ZeRO-3 and FSDP2 launch configurations each train the
tiny recipe's first ``engine_steps`` steps (the profile's) on one device as a user launches them (``accelerate launch
--num_processes 1 --config_file CONFIG -m toolkit train``), beside one plain process (``python -m toolkit train``),
all at once, from the same saved weights (``benchmarks/gpu_check_training.py``) in bf16. An engine passes when it ran
as that engine on one process and its loss at every step is within :data:`LOSS_ATOL` of the plain process's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.gpu_check_sections import Profile, Section
from benchmarks.gpu_check_training import Ended, logged, run_side_by_side, starting_recipe
from benchmarks.harness import ROOT, child_env
from toolkit.run_folder import RunInfo

LOSS_ATOL = 1e-3
"""bf16: the largest loss difference, engine against one plain process, over the profile's ``engine_steps``."""
PLAIN = "one process"
_RECORDED = {"DEEPSPEED": "deepspeed", "FSDP": "fsdp"}
"""A launch config's ``distributed_type``: the engine the run must record in ``run_info.json``."""
def _launch_config(config: str) -> dict:
    return yaml.safe_load((ROOT / config).read_text())


def engines(section: Section, profile: Profile, scratch: Path) -> None:
    """The plain process and every engine of ``profile`` that runs on its device (the others skipped: they need a
    GPU), side by side; one row per run and one check per engine."""
    recipe = starting_recipe(section, profile, scratch)
    if recipe is None:
        return
    env = child_env()
    train = ["-m", "toolkit", "train", str(recipe), "model.precision=bf16", f"train.max_steps={profile.engine_steps}"]
    runs = {PLAIN: scratch / "engine-plain"}
    commands = {PLAIN: ([sys.executable, *train, f"output.dir={runs[PLAIN]}"], env)}
    configs: dict[str, str] = {}
    for name, config, options in profile.engines:
        if config is None:
            section.skip(name, f"{name} needs a GPU")
            continue
        configs[name], runs[name] = config, scratch / f"engine-{len(runs)}"
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                  "--main_process_port", "0", "--config_file", str(ROOT / config), *options]
        commands[name] = ([*launch, *train, f"output.dir={runs[name]}"], env)
    ended = run_side_by_side(section, commands, scratch)
    plain, _ = logged(runs[PLAIN])
    steps = profile.engine_steps
    plain_failed = _failure(ended[PLAIN], RunInfo(), plain, None, steps)
    for name, run in runs.items():
        records, info = logged(run)
        losses, reference = [r["loss"] for r in records], [r["loss"] for r in plain]
        gaps = [abs(a - b) for a, b in zip(losses, reference, strict=False)] if name != PLAIN else []
        section.add({"run": name, "config": configs.get(name), "engine": info.engine,
                     "processes": info.processes, "precision": info.precision,
                     "attention": info.attention, "exit_code": ended[name].code, "steps": len(records),
                     "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                     "max_loss_diff": max(gaps, default=None), "wall_s": ended[name].wall_s, "losses": losses,
                     "log_tail": ended[name].log[-2000:] if ended[name].code != 0 else ""})
        if name == PLAIN:
            continue
        expected = _RECORDED.get(_launch_config(configs[name]).get("distributed_type", ""), "?")
        why = _failure(ended[name], info, records, expected, steps) or (plain_failed and f"{PLAIN}: {plain_failed}")
        section.check(f"{name} ({configs[name]}) vs one process: the loss at each of {steps} steps, bf16 "
                      "(largest difference)", None if why else max(gaps), LOSS_ATOL, why)


def _failure(ended: Ended, info: RunInfo, records: list[dict[str, Any]], engine: str | None, steps: int) -> str:
    """Why a run has no losses to compare ('' when it has): its exit, the engine and process count it recorded in
    ``run_info.json`` (when ``engine`` is given), or fewer than ``steps`` steps logged."""
    if ended.code != 0:
        return ended.reason()
    if engine is not None and (info.engine, info.processes) != (engine, 1):
        return f"ran as {info.engine} on {info.processes} processes, not {engine} on 1"
    if len(records) < steps:
        return f"logged {len(records)} of {steps} steps"
    return ""
