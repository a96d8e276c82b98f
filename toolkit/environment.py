"""What a run ran on: library versions and the device, for run_info.json and the report."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

_PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "lm-eval", "flash-attn", "flash-attn-4",
             "unsloth", "deepspeed", "liger-kernel")


def package_versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        backend = f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
        return f"{torch.cuda.get_device_name(device)} ({backend})"
    return f"CPU ({_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
