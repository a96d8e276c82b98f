"""One logger interface: ``metrics.jsonl`` always, mirrored to TensorBoard or Weights & Biases through accelerate's
trackers when the recipe asks; and the peak memory its rows record."""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from toolkit.errors import UserError
from toolkit.output_paths import write_text
from toolkit.plan.memory import GIB
from toolkit.recipe.schema import LoggingSpec
from toolkit.run_folder import METRICS, TENSORBOARD, read_metrics


def check_logging_backend(spec: LoggingSpec) -> None:
    """A :class:`UserError` naming ``logging.backend`` when its package is not installed: checked before the model
    loads."""
    if spec.backend in ("tensorboard", "wandb") and importlib.util.find_spec(spec.backend) is None:
        raise UserError(f"logging.backend: {spec.backend} is not installed (pip install '.[{spec.backend}]')")


def tracker_kwargs(spec: LoggingSpec, run_dir: Path) -> dict[str, Any]:
    """The ``Accelerator`` arguments of the recipe's backend (its package checked first): accelerate's tracker, which
    logs on the main process only, with the run folder for TensorBoard's files."""
    check_logging_backend(spec)
    return {} if spec.backend == "none" else {"log_with": spec.backend, "project_dir": str(run_dir)}


class MetricsLogger:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and logs its numbers, as ``train/<key>``, to the
    trackers of ``accelerator`` (:func:`tracker_kwargs`; none: the file only)."""

    def __init__(self, run_dir: Path, spec: LoggingSpec, run_name: str, accelerator: Accelerator | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = run_dir / METRICS
        self.accelerator = accelerator
        if enabled and accelerator is not None:  # TensorBoard's tracker names its folder after the project
            project = TENSORBOARD if spec.backend == "tensorboard" else spec.project or "longctx"
            accelerator.init_trackers(project, init_kwargs={"wandb": {"name": run_name, "dir": str(run_dir)}})

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.accelerator is not None:
            self.accelerator.log({f"train/{key}": value for key, value in record.items()
                                  if isinstance(value, (int, float)) and key != "global_step"},
                                 step=record["global_step"])

    def truncate_after(self, global_step: int) -> None:
        """On resume, keep the complete records up to the checkpoint's ``global_step`` (:func:`read_metrics`), so the
        curve has no duplicates and no line cut off by a killed run."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_metrics(self.run_dir) if record["global_step"] <= global_step]
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def close(self) -> None:
        """End the trackers however training ended, once: ``accelerator.end_training`` would also end the process
        group, which saving the run still needs, and finds none left to end at the run's end."""
        if self.accelerator is not None:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new window for :func:`peak_memory_gib` (CUDA only: a process's peak resident memory never resets)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """GiB at the peak: on CUDA the most memory tensors took on ``device`` since :func:`reset_peak_memory`, else this
    process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak * (1 if sys.platform == "darwin" else 1024) / GIB
