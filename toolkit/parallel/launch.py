"""What ``accelerate launch`` (or ``torchrun``) told this process through its environment: how many processes were
started and which engine the launch config names."""

from __future__ import annotations

import os
from collections.abc import Mapping

from toolkit.errors import UserError


def launched_processes(env: Mapping[str, str] = os.environ) -> int:
    """Processes started by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE``), 1 for a plain ``python``."""
    return int(env.get("WORLD_SIZE", "1"))


def local_processes(env: Mapping[str, str] = os.environ) -> int:
    """Of those, the processes on this machine (``LOCAL_WORLD_SIZE``)."""
    return int(env.get("LOCAL_WORLD_SIZE", "1"))


def launched_engine(env: Mapping[str, str] = os.environ) -> str | None:
    """``"deepspeed"``, ``"fsdp"`` (FSDP2) or None (one process, DDP), as ``accelerate launch`` set the environment."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if env.get("FSDP_VERSION", "1") != "2":
            raise UserError("the launch config's fsdp_config.fsdp_version: 1 is not supported; use 2 "
                            "(configs/fsdp2.yaml)")
        return "fsdp"
    return None
