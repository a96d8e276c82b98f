"""What a resumed run continues from, read without torch (``validate`` reads it as ``train`` does): the checkpoint
(:func:`toolkit.training.resume_point.resume_point`), where training stood in it (:class:`TrainerState`, written by
:mod:`toolkit.training.checkpoints`), and the run's record of what trained (``recipe.resolved.yaml``) and the base
model the checkpoint trained from, which a resume may not contradict (:func:`check_record`, :func:`check_base`), and
what a resume changed in the record (:func:`resume_entry`, kept in ``run_info.json``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit.data.stream_state import StreamState
from toolkit.errors import UserError
from toolkit.file_reading import read_json_object
from toolkit.formatting.numbers import setting_value
from toolkit.model.sources import base_identity
from toolkit.recipe.schema import Recipe
from toolkit.recipe.yaml_files import key_step, read_yaml
from toolkit.run_folder import RECIPE, Change, Resume
from toolkit.training.resume_point import STATE, CheckpointsHeld, resume_point


@dataclass(frozen=True)
class TrainerState:
    """Where training stands: the stage, the optimizer steps done in it, and in the run; ``data`` is what the
    data stream depends on (:func:`toolkit.training.data_identity.data_identity`) and ``stream`` where the stage's
    row stream stands after the steps done (:meth:`toolkit.data.batches.StageBatches.position`), and ``base`` the
    base model's identity (:func:`toolkit.model.sources.base_identity`; None for a random init), each None in older
    checkpoints."""

    stage: int
    step: int
    global_step: int
    stage_done: bool = False
    data: dict[str, Any] | None = field(default=None, compare=False)
    stream: StreamState | None = field(default=None, compare=False)
    base: str | None = field(default=None, compare=False)


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
    record of what trained (:func:`check_record`) and names the base model the checkpoint trained from, as far as it
    is known before loading it (:func:`check_base`); None for a new run. ``validate`` and ``train`` both read it."""
    try:
        latest = resume_point(recipe.run_dir, recipe.train.resume)
    except CheckpointsHeld as held:  # what continuing that run takes, as the line says
        if differing := record_differences(recipe, read_state(held.latest)):
            raise CheckpointsHeld(recipe.run_dir, held.latest, "; ".join(differing)) from None
        raise
    if latest is None:
        return None
    state = read_state(latest)
    check_record(recipe, state)
    check_base(recipe, latest, state, base_identity(recipe.model))
    return latest, state


def check_base(recipe: Recipe, checkpoint: Path, state: TrainerState, now: str | None) -> None:
    """A UserError when the base model ``recipe`` names is not the one the checkpoint at ``checkpoint`` (of ``state``)
    trained from: its identity ``now`` (:func:`base_identity`) is not the recorded one. A LoRA checkpoint holds the
    adapter, not the base it goes on. Nothing is compared where either is unknown: a random init, an older checkpoint,
    a hub model not in the cache yet (``train`` compares again once the model has loaded)."""
    if state.base is not None and now is not None and state.base != now:
        raise UserError(f"model.name_or_path: {recipe.model.name_or_path} is not the model the checkpoint "
                        f"({checkpoint}) trained from: its config.json and weight files' names and sizes give "
                        f"{state.base} in the checkpoint, {now} now. Restore that model, or start a new run with "
                        "output.dir=...")


def check_record(recipe: Recipe, state: TrainerState) -> None:
    """A UserError naming each setting, with its recorded and its new value, in which ``recipe`` differs from the run's
    record (its ``recipe.resolved.yaml``) in what trained the checkpoint's weights (:func:`_trained`): the model and
    method always (the checkpoint holds their weights), and what trained the stages finished by the checkpoint
    ``state``: a resume trains none of them again, and the record it writes (which the report, predict and export
    read) would claim settings their weights never had. A stage the checkpoint is inside may change its budget and
    optimisation as the data check allows (``toolkit.training.data_identity``)."""
    recorded = _recorded(recipe)
    if recorded is not None and (changed := record_differences(recipe, state, recorded)):
        finished = _finished(recipe, state, recorded)
        what = "every stage" if finished == len(recipe.train.stages) else \
            ", ".join(recipe.train.stage_name(i) for i in range(finished))
        raise UserError(f"{'; '.join(changed)}: not as in {recipe.run_dir / RECIPE}, the record of what trained ("
                        f"{what}, finished): those weights trained with the recorded settings, and a resume would "
                        "record settings they never had. Put them back, or start a new run with output.dir=...")


def record_differences(recipe: Recipe, state: TrainerState, recorded: dict[str, Any] | None = None) -> list[str]:
    """Each setting of what trained the checkpoint's weights (:func:`check_record`) in which ``recipe`` differs from
    the run's record (``recorded``, read from the run folder when not given), as ``<field> (recorded <value>, now
    <value>)``; none without a record."""
    recorded = _recorded(recipe) if recorded is None else recorded
    if recorded is None:
        return []
    finished = _finished(recipe, state, recorded)
    everything = finished == len(recipe.train.stages)
    old = _trained(recipe, recorded, finished, everything)
    new = _trained(recipe, recipe.model_dump(mode="json"), finished, everything)
    return [f"{where} (recorded {setting_value(was)}, now {setting_value(now)})"
            for key, part in new.items() for where, was, now in differences(old.get(key), part, key)
            if not same_file_moved(was, now)]


NOT_A_CHANGE = ("train.resume",)
"""What says how a start treats the run folder, not how the run trains: no resume records it as changed."""


def resume_entry(recipe: Recipe, state: TrainerState, at: str) -> Resume:
    """A resume at ``at`` of ``recipe`` from a checkpoint of ``state``, as ``run_info.json`` keeps it, with each
    setting in which ``recipe`` differs from the run's record and both values: the record, rewritten by the resume,
    then shows the new values only. Call it before the rewrite; without a record the changes are unknown (None)."""
    recorded = _recorded(recipe)
    changed = None if recorded is None else [
        Change(setting=where, before=was, after=now)
        for where, was, now in differences(recorded, recipe.model_dump(mode="json"), "") if where not in NOT_A_CHANGE]
    return Resume(at=at, stage=state.stage, step=state.step, changed=changed)


def _recorded(recipe: Recipe) -> dict[str, Any] | None:
    """The run's record as written (YAML, not read through today's schema); None without one."""
    path = recipe.run_dir / RECIPE
    if not path.is_file():
        return None
    recorded, _ = read_yaml(path)
    return recorded if isinstance(recorded, dict) else None


def _finished(recipe: Recipe, state: TrainerState, recorded: dict[str, Any]) -> int:
    """The stages the checkpoint ``state`` had finished, of those both ``recipe`` and its ``recorded`` recipe hold."""
    return min(state.stage + state.stage_done, len(recipe.train.stages),
               len(recorded.get("train", {}).get("stages", [])))


WEIGHT_SETTINGS = {"model": ("name_or_path", "revision", "init_config", "tokenizer", "train_tokenizer", "backend",
                             "precision", "trust_remote_code"),
                   "train": ("max_steps", "optimizer", "weight_decay", "betas", "max_grad_norm", "scheduler",
                             "min_lr_ratio")}
"""The run-wide settings the weights of a finished stage depend on, beside ``method`` (all of it) and the stage's own
settings and data; the others (attention kernel, memory switches, checkpoints kept, ``parallel``, evaluations)
change how a run computes or what it writes, not what it learns."""
STAGE_NOT_WEIGHTS = ("name", "evaluate")
"""A stage's settings that name it or its evaluation, not what it trains."""


def _trained(recipe: Recipe, dump: dict[str, Any], finished: int, everything: bool) -> dict[str, Any]:
    """Of a recipe ``dump`` (the record as read, or ``recipe``'s), what trained the checkpoint's weights, keyed by where
    ``recipe`` holds it: ``method`` and the model's :data:`WEIGHT_SETTINGS` always; once ``finished`` stages are done,
    the run-wide optimisation settings and each of those stages' own settings (:data:`STAGE_NOT_WEIGHTS` aside) and
    data (its own or ``train.data``); and the seed once every stage has (while a stage is left, the data check names a
    changed seed)."""
    train = dump.get("train", {})
    parts: dict[str, Any] = {"method": dump.get("method")}
    blocks = WEIGHT_SETTINGS.items() if finished else [("model", WEIGHT_SETTINGS["model"])]
    parts |= {f"{block}.{key}": dump.get(block, {}).get(key) for block, keys in blocks for key in keys}
    for i, stage in enumerate(train.get("stages", [])[:finished]):
        parts[f"train.stages[{i}]"] = {k: v for k, v in stage.items() if k not in (*STAGE_NOT_WEIGHTS, "data")}
        parts[recipe.train.data_field(i)] = stage.get("data") or train.get("data")
    if everything:
        parts["seed"] = dump.get("seed")
    return parts


def same_file_moved(old: Any, new: Any) -> bool:
    """Two local paths to a file of the same name: the run folder read on another machine, or the repository
    moved (what a tokenizer holds is checked by its hash, what a data source reads by its files' names and sizes:
    ``toolkit.training.data_identity``)."""
    return isinstance(old, str) and isinstance(new, str) and old.startswith("/") and new.startswith("/") and \
        Path(old).name == Path(new).name


def differences(old: Any, new: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Each differing leaf of two records (JSON-like) at ``path`` (empty: the top) as (path, old, new), in ``old``'s
    order; keys missing on either side (a schema from another version) are not compared."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key in new:
                yield from differences(old[key], new[key], path + key_step(key, first=not path))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from differences(a, b, f"{path}[{i}]")
    elif old != new:
        yield path, old, new
