"""Optimizer steps in tests through the loop's own :func:`toolkit.training.loop.train_step`, on one process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from toolkit.memory.optimizers import build_optimizer
from toolkit.model.lora import CausalLM
from toolkit.recipe.schema import LoggingSpec, TrainSpec
from toolkit.training.checkpoints import CheckpointManager
from toolkit.training.faults import StopFlag
from toolkit.training.loop import LoopParts
from toolkit.training.metrics import MetricsLogger
from toolkit.training.objective import CausalLMObjective


@contextmanager
def step_parts(model: CausalLM, device: str, folder: Path, lr: float = 1e-3) -> Iterator[LoopParts]:
    """What ``train_step`` needs to train ``model`` on ``device`` as a one-process run does: the objective and the
    recipe's default optimizer, prepared by accelerate, checkpoints in ``folder``. No accelerate state outlives the
    block (the first ``Accelerator`` of a process would fix the device of every later one)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu")
    train = TrainSpec(stages=[{"seq_len": 64, "max_steps": 1}])
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], train, lr)
    objective, optimizer = accelerator.prepare(CausalLMObjective(model, loss_chunk_size=None), optimizer)
    try:
        yield LoopParts(accelerator, objective, optimizer, train, CheckpointManager(folder, 1, accelerator),
                        MetricsLogger(folder, LoggingSpec(), "test", enabled=False), 1, StopFlag())
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
