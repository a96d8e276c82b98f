"""Checkpoints that survive faults: written whole or not at all, the last N kept, the latest resumed.

Each checkpoint is a folder ``checkpoints/stage-<k>-step-<n>/`` written by ``accelerator.save_state``
(safetensors weights, optimizer, RNG; sharded correctly under FSDP/DeepSpeed) plus ``trainer_state.json``
(where training stands, where its data stream stands, what that stream depends on:
``toolkit.training.data_identity``, and the base model's identity: ``toolkit.model.sources.base_identity``).
Its weights are the trainable parameters only (:func:`keep_trainable`): for LoRA the adapter (and any modules
trained beside it), not the frozen base, which a resumed run rebuilds from the recipe as the first run did;
for full fine-tuning, every parameter and buffer, as before.
It is first written to a hidden temporary folder and renamed into place, so a crash or a full disk
mid-write leaves the previous checkpoint intact; leftovers of such a crash are removed at the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import SAFE_MODEL_NAME
from safetensors.torch import load_file
from torch import nn

from toolkit.errors import RunFailure, UserError, reason
from toolkit.model.eval_copy import tied_names
from toolkit.run_folder import CHECKPOINTS, RECIPE
from toolkit.training.resume_point import STATE, complete_checkpoints
from toolkit.training.resume_record import TrainerState, read_state


class CheckpointManager:
    def __init__(self, run_dir: Path, keep_last: int, accelerator: Accelerator):
        self.root = run_dir / CHECKPOINTS
        self.keep_last = keep_last
        self.accelerator = accelerator
        self.data_identity: dict[str, Any] | None = None
        """Written into every checkpoint's state (unless the state carries its own)."""
        self.base: str | None = None
        """The base model's identity (``toolkit.model.sources.base_identity``), written into every checkpoint's state
        as ``data_identity`` is."""
        self.last_save_s = 0.0
        """Seconds the latest save took (0 before the first)."""
        accelerator.register_save_state_pre_hook(keep_trainable)
        accelerator.register_load_state_pre_hook(load_trainable)

    def record_inputs(self, index: int, inputs: list[dict[str, Any]]) -> None:
        """What the sources of stage ``index`` read as it starts (``toolkit.training.data_inputs.stage_inputs``), in
        place of what they read when the run started: a stage reads its files when it begins."""
        if self.data_identity is not None:
            self.data_identity["stages"][index]["inputs"] = inputs

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        return complete_checkpoints(self.root)

    def latest(self) -> tuple[Path, TrainerState] | None:
        done = self.complete()
        return (done[-1], read_state(done[-1])) if done else None

    def remove_partial(self) -> None:
        """Delete temporary folders left by a crash during a save."""
        if self.accelerator.is_main_process and self.root.is_dir():
            for leftover in self.root.glob(".tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def save(self, state: TrainerState) -> Path:
        """Write a checkpoint atomically and prune old ones. A failed write keeps the previous ones."""
        state = replace(state, data=self.data_identity if state.data is None else state.data,
                        base=self.base if state.base is None else state.base)
        started = time.perf_counter()
        name = f"stage-{state.stage}-step-{state.step:06d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if self.accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(tmp), safe_serialization=True)
            if self.accelerator.is_main_process:
                (tmp / STATE).write_text(json.dumps(asdict(state)))
                _fsync_tree(tmp)
        except OSError as exc:
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = self.latest()
            previous = f"; the previous checkpoint {kept[0]} is intact" if kept else ""
            raise RunFailure(f"could not write checkpoint {final} ({exc.strerror or exc}){previous}") from None
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.complete()[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.last_save_s = time.perf_counter() - started
        return final

    def load(self, path: Path) -> None:
        """Load the checkpoint at ``path``; a :class:`UserError` when its weights do not fit the model (another shape
        or method), whichever engine loads them (:func:`load_trainable`, DeepSpeed's or FSDP's loader)."""
        try:
            self.accelerator.load_state(str(path))
        except RuntimeError as exc:  # torch's load_state_dict lists each weight of another shape, one per line
            if "Error(s) in loading state_dict" not in str(exc):
                raise
            lines = [line.strip() for line in str(exc).splitlines()]
            detail = next((line.rstrip(".") for line in lines[1:] if line), reason(exc))
            raise _misfit(str(path), detail) from None


def _frozen(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _tied(model: nn.Module) -> set[str]:
    """Second names of shared parameters (a tied ``lm_head.weight``), which a safetensors file holds once."""
    return {name for names in tied_names(model) for name in names[1:]}


def keep_trainable(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], _folder: str) -> None:
    """accelerate's save hook: drop frozen parameters from the state dicts it is about to write. Under
    FSDP/DeepSpeed the engines write their own files and ``weights`` is empty: nothing to do. The result stays
    an OrderedDict, which accelerate's safetensors writer de-duplicates (tied embeddings)."""
    for i, (model, state) in enumerate(zip(models, weights, strict=False)):  # weights: [] when sharded
        frozen = _frozen(model)
        weights[i] = OrderedDict((key, value) for key, value in state.items() if key not in frozen)


def load_trainable(models: list[nn.Module], folder: str) -> None:
    """accelerate's load hook: load each model's saved weights, which may leave out frozen parameters and
    nothing else, then take the models off accelerate's list so it does not load them strictly again."""
    for i, model in enumerate(models):
        file = Path(folder) / f"{SAFE_MODEL_NAME}{f'_{i}' if i else ''}.safetensors"  # accelerate's file names
        missing, unexpected = model.load_state_dict(load_file(file), strict=False)  # another shape: a RuntimeError
        wrong = sorted(set(missing) - _frozen(model) - _tied(model)) + sorted(unexpected)
        if wrong:
            raise _misfit(folder, f"first key: {wrong[0]}")
    models.clear()


def _misfit(folder: str, detail: str) -> UserError:
    return UserError(f"checkpoint {folder} does not fit the model the recipe builds ({detail}): resume with the recipe "
                     f"it was saved with ({RECIPE} in the run folder), or start a new run with output.dir=...")


def _fsync_tree(folder: Path) -> None:
    for item in folder.rglob("*"):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
