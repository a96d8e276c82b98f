"""One logger interface: ``metrics.jsonl`` always, TensorBoard or Weights & Biases when the recipe asks; and the
peak memory its rows record."""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import UserError
from toolkit.output_paths import write_text
from toolkit.plan.memory import GIB
from toolkit.recipe.schema import LoggingSpec
from toolkit.run_folder import METRICS, read_metrics


def check_logging_backend(spec: LoggingSpec) -> None:
    """A :class:`UserError` naming ``logging.backend`` when its package is not installed: checked before the model
    loads."""
    if spec.backend in ("tensorboard", "wandb") and importlib.util.find_spec(spec.backend) is None:
        raise UserError(f"logging.backend: {spec.backend} is not installed (pip install '.[{spec.backend}]')")


class MetricsLogger:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors it to the chosen backend."""

    def __init__(self, run_dir: Path, spec: LoggingSpec, run_name: str, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = run_dir / METRICS
        self._tb = self._wandb = None
        if not enabled:
            return
        check_logging_backend(spec)
        if spec.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        elif spec.backend == "wandb":
            import wandb

            self._wandb = wandb.init(project=spec.project or "longctx", name=run_name, dir=str(run_dir))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "global_step"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"train/{key}", value, record["global_step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["global_step"])

    def truncate_after(self, global_step: int) -> None:
        """On resume, keep the complete records up to the checkpoint's ``global_step`` (:func:`read_metrics`), so the
        curve has no duplicates and no line cut off by a killed run."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_metrics(self.run_dir) if record["global_step"] <= global_step]
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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
