"""Section 2 of ``benchmarks/gpu_check.py`` (the tiny recipe's first steps on the device and on the CPU from the same
weights) and what section 3 shares with it: those starting weights, and training processes run side by side within a
section's budget.

The starting weights are the tiny recipe's own random init (``model.init_config`` and its seed) built once on the
CPU and saved with the recipe's trained tokenizer; every run loads them through ``model.name_or_path``. (Built on an
accelerator, the init would come from that device's random generator, so the device and the CPU would start from
different weights and a kernel bug would hide in that difference.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu_check_sections import Profile, Section
from benchmarks.harness import ROOT, child_env
from toolkit.parallel.engines import release_build_locks
from toolkit.recipe.loading import dump_recipe, load_recipe
from toolkit.recipe.one_stage import one_stage
from toolkit.recipe.schema import ModelSpec
from toolkit.run_folder import RunInfo, read_metrics, read_run_info

FIRST_STEP_ATOL = 1e-5
"""fp32, the same weights and rows: the first step's loss on the device against the CPU's."""
STEPS_ATOL = 1e-3
"""fp32: the largest loss difference, device against CPU, over the profile's first ``compared_steps`` steps."""

_SAVE_START = ("import sys; from benchmarks.gpu_check_training import save_start; "
               "save_start(sys.argv[1], sys.argv[2], sys.argv[3:])")
_TRAIN_ONLY = ("import sys; from toolkit.recipe.loading import load_recipe; from toolkit.runner import train_stages; "
               "from toolkit.training.faults import StopFlag; from toolkit.training.session import setup; "
               "session = setup(load_recipe(sys.argv[1], sys.argv[2:])); train_stages(session, StopFlag()); "
               "session.logger.close()")
"""The runner's setup and training steps alone (no final save, no report): what the comparison needs."""
_LAUNCHER = "ChildFailedError"
"""torch's launcher's summary of a failed training process, which says less than that process's own error."""


def save_start(recipe_path: str, folder: str, overrides: list[str]) -> None:
    """The model of ``recipe_path`` (with ``overrides``) built on the CPU as the recipe says, saved with its tokenizer
    into ``folder``, and ``folder/recipe.yaml``: the same recipe loading those weights."""
    import torch

    from toolkit.data.tokenizer import load_tokenizer
    from toolkit.model.loading import load_model

    recipe = load_recipe(recipe_path, overrides)
    tokenizer = load_tokenizer(recipe.model, recipe.seed)
    loaded = load_model(recipe.model, recipe.method, tokenizer, torch.device("cpu"), recipe.seed)
    loaded.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe.model = ModelSpec(name_or_path=folder, attention=recipe.model.attention, precision=recipe.model.precision)
    dump_recipe(recipe, Path(folder) / "recipe.yaml")


def _first_stage_recipe(folder: Path) -> Path:
    """The tiny recipe's first stage alone, logging every step, with no evaluations."""
    recipe = one_stage(load_recipe(ROOT / "recipes" / "tiny-passkey.yaml"), 0)
    path = folder / "tiny-first-stage.yaml"
    dump_recipe(recipe, path)
    return path


@dataclass
class Ended:
    """How a process ended: its exit code, output and wall time."""

    code: int | None
    """Its exit code; None: stopped at the section's budget."""
    log: str
    """Its stdout and stderr."""
    wall_s: float

    def reason(self) -> str:
        """One line: the exit code and the toolkit's last error line, else the last exception raised (the
        launcher's own summary aside), else the log's last line."""
        if self.code is None:
            return "stopped at the section's budget"
        lines = [line.strip() for line in self.log.splitlines() if line.strip()]
        toolkit = [line for line in lines if line.startswith(("error: ", "failed: "))]
        raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line) and _LAUNCHER not in line]
        return f"exit code {self.code}: {(toolkit or raised or lines or [''])[-1][:300]}"


def starting_recipe(section: Section, profile: Profile, scratch: Path) -> Path | None:
    """The tiny recipe's first stage (``profile.stage_overrides`` applied) loading its saved starting weights, built
    by the first section that asks; None when they could not be built (the section says why)."""
    folder = scratch / "start"
    recipe = folder / "recipe.yaml"
    if recipe.exists():
        return recipe
    command = [sys.executable, "-c", _SAVE_START, str(_first_stage_recipe(scratch)), str(folder),
               *profile.stage_overrides]
    try:
        done = subprocess.run(command, cwd=ROOT, env=child_env(CUDA_VISIBLE_DEVICES=""), capture_output=True,
                              text=True, timeout=max(section.left(), 1))
    except subprocess.TimeoutExpired:
        section.skip("the starting weights", f"not built within {section.budget_s:.0f} s")
        return None
    if done.returncode != 0 or not recipe.exists():
        section.skip("the starting weights", Ended(done.returncode, done.stderr, 0).reason())
        return None
    return recipe


def run_side_by_side(section: Section, commands: dict[str, tuple[list[str], dict[str, str]]],
                     logs: Path) -> dict[str, Ended]:
    """Start every ``name: (argv, env)`` at once (output into ``logs/name.log``) and wait for each within the
    section's budget; a process (with its children) that outlives it, or this function, is killed."""
    started, wall = time.monotonic(), time.time()
    procs: dict[str, subprocess.Popen] = {}
    ended = {}
    killed = False
    try:
        for name, (argv, env) in commands.items():
            with (logs / f"{name.replace(' ', '-')}.log").open("w") as log:
                procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for name, proc in procs.items():
            try:
                code: int | None = proc.wait(timeout=max(section.left(), 1))
            except subprocess.TimeoutExpired:
                stop(proc)
                killed, code = True, None
                section.skip(f"the rest of {name}", f"not done within {section.budget_s:.0f} s")
            output = (logs / f"{name.replace(' ', '-')}.log").read_text(errors="replace")
            ended[name] = Ended(code, output, time.monotonic() - started)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop(proc)
                killed = True
        if killed:  # every process started here is gone now: what locks they made, none will release
            _release_locks(wall)
    return ended


def stop(proc: subprocess.Popen, since: float | None = None) -> None:
    """Kill ``proc`` and every process it started, however deep (torch's launcher starts the training processes
    with setsid, out of reach of a process-group kill); with ``since``, the wall-clock time it started, also the
    torch extension build locks made since, which a killed DeepSpeed process would leave for later launches to wait
    on for ever."""
    for pid in _family(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    if since is not None:
        _release_locks(since)


def _release_locks(since: float) -> None:
    """Delete the torch extension build locks made since ``since``, once every process that could hold them was
    killed (another job building an op in the same extensions folder meanwhile would lose its lock)."""
    for lock in release_build_locks(since):
        print(f"deleted {lock}, left by a process killed while it held it", file=sys.stderr)


def _family(pid: int) -> list[int]:
    """``pid`` first, then its descendants, from ``/proc/*/stat`` (parent ids)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (name)": state, parent
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    family = [pid]
    for member in family:
        family += children.get(member, [])
    return family


def logged(run: Path) -> tuple[list[dict[str, Any]], RunInfo]:
    """A run folder's ``metrics.jsonl`` records and ``run_info.json`` (empty where missing)."""
    return read_metrics(run), read_run_info(run)


def device_vs_cpu(section: Section, profile: Profile, scratch: Path) -> None:
    """The tiny recipe's first ``profile.compared_steps`` steps in fp32 on the device and, at the same time, on the CPU,
    from the same saved weights; the first step's loss and every step's are checked (:data:`FIRST_STEP_ATOL`,
    :data:`STEPS_ATOL`). On a CPU-only machine both run on the CPU, through the same code."""
    recipe = starting_recipe(section, profile, scratch)
    if recipe is None:
        return
    steps = profile.compared_steps
    runs = {"device": scratch / "tiny-device", "cpu": scratch / "tiny-cpu"}
    commands = {where: ([sys.executable, "-c", _TRAIN_ONLY, str(recipe), f"output.dir={run}",
                         f"train.max_steps={steps}"],
                        child_env(CUDA_VISIBLE_DEVICES="") if where == "cpu" else child_env())
                for where, run in runs.items()}
    ended = run_side_by_side(section, commands, scratch)
    curves: dict[str, list[float]] = {}
    for where, run in runs.items():
        records, info = logged(run)
        if not records:
            section.skip(f"tiny stage on {where}", f"no step logged ({ended[where].reason()})")
            continue
        curves[where] = [r["loss"] for r in records]
        section.add({"run": where, "device": info.device, "attention": info.attention,
                     "steps": len(records), "first_loss": curves[where][0], "last_loss": curves[where][-1],
                     "train_s": records[-1]["elapsed_s"], "tokens_per_s": records[-1]["tokens_per_s"],
                     "losses": curves[where]})
    gaps = [abs(a - b) for a, b in zip(curves.get("device", []), curves.get("cpu", []), strict=False)]
    why = "" if len(gaps) == steps else f"{len(gaps)} of {steps} steps logged by both runs"
    section.check("the first step's loss, device vs CPU (fp32)", gaps[0] if gaps else None, FIRST_STEP_ATOL,
                  "" if gaps else why)
    section.check(f"the loss at each of the first {steps} steps, device vs CPU (largest difference)",
                  max(gaps) if not why else None, STEPS_ATOL, why)
