"""What a resumed run continues from, read without torch (``validate`` reads it as ``train`` does): the checkpoint
(:func:`toolkit.training.resume_point.resume_point`), where training stood in it (:class:`TrainerState`, written by
:mod:`toolkit.training.checkpoints`), and the run's record of what trained (``recipe.resolved.yaml``), which a resume
may not contradict (:func:`check_record`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit.data.stream_state import StreamState
from toolkit.errors import UserError
from toolkit.file_reading import read_json_object
from toolkit.recipe.schema import Recipe
from toolkit.recipe.yaml_files import key_step
from toolkit.run_folder import RECIPE, read_recipe
from toolkit.training.resume_point import STATE, resume_point


@dataclass(frozen=True)
class TrainerState:
    """Where training stands: the stage, the optimizer steps done in it, and in the run; ``data`` is what the
    data stream depends on (:func:`toolkit.training.data_identity.data_identity`) and ``stream`` where the stage's
    row stream stands after the steps done (:meth:`toolkit.data.batches.StageBatches.position`), each None in older
    checkpoints."""

    stage: int
    step: int
    global_step: int
    stage_done: bool = False
    data: dict[str, Any] | None = field(default=None, compare=False)
    stream: StreamState | None = field(default=None, compare=False)


def read_state(checkpoint: Path) -> TrainerState:
    """The state of the complete checkpoint at ``checkpoint`` (a file cut short, or without where training stood: one
    line naming it)."""
    state = read_json_object(checkpoint / STATE)
    if missing := [key for key in ("stage", "step", "global_step") if not isinstance(state.get(key), int)]:
        raise UserError(f"{checkpoint / STATE}: no {', '.join(missing)} (not a checkpoint's state); move that "
                        "checkpoint away to resume from the one before")
    known = {f.name for f in fields(TrainerState)}
    if state.get("stream") is not None:
        state["stream"] = StreamState.from_json(state["stream"])
    return TrainerState(**{k: v for k, v in state.items() if k in known})


def resume_from(recipe: Recipe) -> tuple[Path, TrainerState] | None:
    """The checkpoint the run continues from (:func:`resume_point`) and its state, once the recipe keeps the run's
    record of what trained (:func:`check_record`); None for a new run. ``validate`` and ``train`` both read it."""
    latest = resume_point(recipe.run_dir, recipe.train.resume)
    if latest is None:
        return None
    state = read_state(latest)
    check_record(recipe, state)
    return latest, state


def check_record(recipe: Recipe, state: TrainerState) -> None:
    """A UserError naming each setting in which ``recipe`` differs from the run's record (its ``recipe.resolved.yaml``)
    in what had trained by the checkpoint ``state``: the finished stages' own settings and data, the seed and the step
    cap, and every training setting once every stage had finished. A resume trains none of them again, and the record
    it writes (which the report, predict and export read) would claim them."""
    recorded = read_recipe(recipe.run_dir)
    finished = min(state.stage + state.stage_done, len(recipe.train.stages),
                   len(recorded.train.stages) if recorded else 0)
    if recorded is None or not finished:  # inside the first stage: the checkpoint's data check has it all
        return
    everything = finished == len(recipe.train.stages)
    old, new = _trained(recorded, finished, everything), _trained(recipe, finished, everything)
    changed = [path for key in new for path, _, _ in differences(old[key], new[key], key)]
    if changed:
        what = "every stage" if everything else ", ".join(recorded.train.stage_name(i) for i in range(finished))
        raise UserError(f"{', '.join(changed)}: not as in {recipe.run_dir / RECIPE}, the record of what trained ("
                        f"{what}, finished): a resume does not train it again, and would record settings never "
                        "trained. Put them back, or start a new run with output.dir=...")


_NOT_TRAINING = frozenset({"resume", "save_every", "keep_last"})
"""``train`` settings that change no weight: whether to resume, and which checkpoints are written and kept."""


def _trained(recipe: Recipe, finished: int, everything: bool) -> dict[str, Any]:
    """What had trained once the first ``finished`` stages were done, by where ``recipe`` holds it: every training
    setting (:data:`_NOT_TRAINING` aside) when ``everything``; else each of those stages with its data (its own or
    ``train.data``), the seed of their data streams and ``train.max_steps``, which caps them."""
    dump = recipe.model_dump(mode="json")
    if everything:
        dump["train"] = {key: value for key, value in dump["train"].items() if key not in _NOT_TRAINING}
        return {key: dump[key] for key in ("seed", "model", "method", "train", "parallel")}
    stages = {f"train.stages[{i}]": {**stage, "data": stage["data"] or dump["train"]["data"]}
              for i, stage in enumerate(dump["train"]["stages"][:finished])}
    return {**stages, "seed": recipe.seed, "train.max_steps": recipe.train.max_steps}


def differences(old: Any, new: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Each differing leaf of two records (JSON-like) as (path, old, new), in ``old``'s order; keys missing on either
    side (a schema from another version) are not compared."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key in new:
                yield from differences(old[key], new[key], path + key_step(key))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from differences(a, b, f"{path}[{i}]")
    elif old != new:
        yield path, old, new
