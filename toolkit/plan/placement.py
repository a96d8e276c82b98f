"""Where activations go when one GPU is at its limit: how many layers' checkpointed inputs to offload, and whether
as fp8, so that both the GPU and the host memory fit; and the host memory there is to fit in.

The host memory of this machine is its total RAM (``os.sysconf``); a run checks against what is available now
(``MemAvailable`` in ``/proc/meminfo``). ``TOOLKIT_HOST_MEMORY_GIB`` replaces both (tests; a machine shared with
other jobs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UserError
from toolkit.plan.memory import GIB, Estimate, ModelShape, Setup, estimate

HOST_MEMORY_ENV = "TOOLKIT_HOST_MEMORY_GIB"


def machine_memory() -> int:
    """Bytes of RAM of this machine (or ``TOOLKIT_HOST_MEMORY_GIB``)."""
    if (override := os.environ.get(HOST_MEMORY_ENV)) is not None:
        try:
            gib = float(override)
        except ValueError:
            gib = math.nan
        if not 0 < gib < math.inf:
            raise UserError(f"{HOST_MEMORY_ENV}: {override!r} is no positive number of GiB")
        return int(gib * GIB)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_memory_label() -> str:
    """Where :func:`machine_memory` comes from, for the plan's header."""
    return HOST_MEMORY_ENV if os.environ.get(HOST_MEMORY_ENV) is not None else "this machine"


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes of RAM available to a new run now (``MemAvailable``; the total where that is not known), or
    ``TOOLKIT_HOST_MEMORY_GIB``."""
    if os.environ.get(HOST_MEMORY_ENV) is None and meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return machine_memory()


@dataclass(frozen=True)
class Fit:
    """One setup's GPU bytes per GPU and host bytes of the ``processes`` one host holds against the budgets."""

    estimate: Estimate
    processes: int
    gpu_budget: float
    host_budget: float

    @property
    def host(self) -> int:
        return self.estimate.host_needed * self.processes

    @property
    def gpu_fits(self) -> bool:
        return self.estimate.total <= self.gpu_budget

    @property
    def host_fits(self) -> bool:
        return self.host <= self.host_budget


def fit(shape: ModelShape, setup: Setup, gpu_budget: float, host_budget: float) -> Fit:
    return Fit(estimate(shape, setup), setup.host_processes or setup.gpus, gpu_budget, host_budget)


def placement(shape: ModelShape, setup: Setup, gpu_budget: float, host_budget: float) -> tuple[Setup, Fit] | None:
    """The checkpointed setup that offloads the fewest layers (as computed before fp8) with both the GPU and the
    host within budget; None when no placement fits both."""
    checkpointed = setup.with_(checkpointing=True)
    for fp8 in (False, True):
        for layers in range(shape.layers + 1):
            candidate = checkpointed.with_(offload=layers, offload_fp8=fp8 and layers > 0)
            result = fit(shape, candidate, gpu_budget, host_budget)
            if result.gpu_fits and result.host_fits:
                return candidate, result
    return None


def placement_setting(setup: Setup, layers: int) -> str:
    """The recipe settings of a placement."""
    offload = "true" if setup.offload is True or setup.offload == layers else str(int(setup.offload))
    fp8 = ", train.activation_offload_dtype: fp8" if setup.offload_fp8 else ""
    return f"train.activation_offload: {offload if setup.offload else 'false'}{fp8}"
