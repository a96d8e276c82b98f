"""What a run ran on: the toolkit's commit, library versions and the device, for run_info.json and the report."""

from __future__ import annotations

import os
import platform
import subprocess
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


TOOLKIT_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the ``toolkit`` package: the checkout's root when it runs from one."""


COMMIT_VARIABLE = "LONGCTX_COMMIT"
"""The commit to record where the toolkit runs from no git checkout (an installed package, a copy of the tree sent to
another machine): what it says is recorded as it is."""


def source_commit(root: Path = TOOLKIT_ROOT) -> str | None:
    """The commit of the git checkout at ``root`` (the toolkit's own by default; ``-dirty`` when tracked files changed
    since); where ``root`` is no checkout, what :data:`COMMIT_VARIABLE` says; ``None`` when neither says (or git
    cannot)."""
    if not (root / ".git").exists():
        return os.environ.get(COMMIT_VARIABLE, "").strip() or None
    try:
        found = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12",
                                "--exclude=*"], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
"""Where PyTorch reads its caching allocator's settings; the first set wins (the second: its name before torch 2.9)."""


def allocator_setting() -> str:
    """The caching allocator's settings this process was given (``PYTORCH_ALLOC_CONF=expandable_segments:True``, say),
    or "torch's default": GPU memory figures (reserved above all) depend on them."""
    for name in ALLOCATOR_VARIABLES:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return "torch's default"


def name_cpu_for_deepspeed() -> None:
    """DeepSpeed, which accelerate and transformers import on the way in runs that do not launch it, guesses its
    device on import and, finding no GPU, warns "If you have GPU or other accelerator, we were unable to detect it":
    where there is none, it is told the CPU (``DS_ACCELERATOR``, unless set)."""
    if not torch.accelerator.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


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
