"""Where a run in ``output.dir`` starts, read without torch (``validate`` reads it as ``train`` does): a new or
empty folder starts a new run; one with checkpoints continues the latest with ``train.resume: true`` and is refused
without it (:class:`CheckpointsHeld`); a finished run without checkpoints and a folder of other files are refused.
A checkpoint is complete once its ``trainer_state.json`` is there (:mod:`toolkit.training.checkpoints` writes it)."""

from __future__ import annotations

import re
from pathlib import Path

from toolkit.errors import UserError
from toolkit.run_folder import CHECKPOINTS, FINAL, holds_other_files

CHECKPOINT_NAME = re.compile(r"^stage-(\d+)-step-(\d+)$")
STATE = "trainer_state.json"


class CheckpointsHeld(UserError):
    """``output.dir`` holds checkpoints and ``train.resume`` is not true: ``train`` refuses, ``validate`` notes it."""

    def __init__(self, run_dir: Path, latest: Path, differing: str | None = None):
        """``differing``: what the recipe must put back to continue that run (its record's settings that differ)."""
        self.latest = latest
        back = f", its recipe as its record has it ({differing})" if differing else ""
        super().__init__(f"{run_dir} already holds checkpoints ({latest.name}): set train.resume=true to continue "
                         f"that run{back}, or output.dir=... for a new one")


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints in the folder ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(p, match) for p in root.iterdir() if (match := CHECKPOINT_NAME.match(p.name)) and (p / STATE).is_file()]
    return [p for p, _ in sorted(found, key=lambda item: tuple(int(x) for x in item[1].groups()))]


def resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run in ``run_dir`` continues from (``resume``: ``train.resume``); None for a new run. A
    :class:`UserError` when the run may not start there."""
    done = complete_checkpoints(run_dir / CHECKPOINTS)
    if done and not resume:
        raise CheckpointsHeld(run_dir, done[-1])
    if not done and (run_dir / FINAL).exists():  # a finished run whose checkpoints were deleted
        raise UserError(f"output.dir: {run_dir} holds a finished run ({FINAL}/) and no checkpoint to resume; "
                        "name a new folder, or move that run away")
    if holds_other_files(run_dir):
        raise UserError(f"output.dir: {run_dir} holds files and is no run folder; name a new or empty folder")
    return done[-1] if done else None
