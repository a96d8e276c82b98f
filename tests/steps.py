"""Optimizer steps in tests through the loop's own :func:`toolkit.training.loop.train_step`, on one process, on
batches the data path builds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from toolkit.data.batches import Batch, collate
from toolkit.data.packing import Document, pack_rows
from toolkit.memory.optimizers import build_optimizer
from toolkit.model.lora import CausalLM
from toolkit.parallel.engines import mixed_precision
from toolkit.recipe.schema import LoggingSpec, TrainSpec
from toolkit.training.checkpoints import CheckpointManager
from toolkit.training.faults import StopFlag
from toolkit.training.loop import LoopParts, train_step
from toolkit.training.metrics import MetricsLogger
from toolkit.training.objective import CausalLMObjective


@contextmanager
def step_parts(model: CausalLM, device: str, folder: Path, lr: float = 1e-3) -> Iterator[LoopParts]:
    """What ``train_step`` needs to train ``model`` on ``device`` as a one-process run does: the objective and the
    recipe's default optimizer, prepared by accelerate with the mixed precision a run of the model's weights' dtype
    takes (bf16 weights: bf16 autocast), checkpoints in ``folder``. No accelerate state outlives the block (the first
    ``Accelerator`` of a process would fix the device of every later one)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision(model.dtype))
    train = TrainSpec(stages=[{"seq_len": 64, "max_steps": 1}])
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], train, lr)
    objective, optimizer = accelerator.prepare(CausalLMObjective(model, loss_chunk_size=None), optimizer)
    try:
        yield LoopParts(accelerator, objective, optimizer, train, CheckpointManager(folder, 1, accelerator),
                        MetricsLogger(folder, LoggingSpec(), "test", enabled=False), 1, StopFlag())
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def rows_batch(ids: torch.Tensor) -> Batch:
    """Each row of ``ids`` (batch x length) one document with a loss on every token, packed by the data path into a
    row of that length: the batch the loop trains on."""
    rows = list(pack_rows([Document(row, row) for row in ids.tolist()], ids.shape[1], "pack", pad_id=0))
    assert len(rows) == ids.shape[0]
    return collate(rows)


def train_losses(model: CausalLM, batch: Batch, steps: int, lr: float, folder: Path,
                 device: str = "cpu") -> list[float]:
    """The losses of ``steps`` optimizer steps of the loop (:func:`step_parts`) on one fixed ``batch``."""
    with step_parts(model, device, folder, lr) as parts:
        return [train_step(parts, [batch], "test", step) for step in range(1, steps + 1)]
