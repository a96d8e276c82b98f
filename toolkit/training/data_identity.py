"""What a run's training data depends on, recorded in every checkpoint and checked on resume.

A stage's batch stream is a pure function of (data spec, tokenizer, seq_len, batch size, seed, process index and
count), and a resumed run continues it from the position its checkpoint saved (``toolkit.data.stream_state``; an
older checkpoint without one replays the ``step * grad_accum`` batches consumed: ``toolkit.data.batches``). That
position only means the same rows under the same inputs, so a checkpoint records those inputs, and a resume that
would change the stream of a stage that has started or is still to come stops with a :class:`UserError` naming the
field.

What stops, while a stage of the checkpoint's recipe is unfinished: ``seed``, the number of processes and how
they share sequences (``parallel.sequence``/``degree``: the data-parallel groups), and for
the stage the checkpoint is inside ``seq_len``, ``batch_size``, ``grad_accum``, its effective data spec (its
own ``data`` or ``train.data``: for a mixture, every source with its weight, filters, upsampling and format, and
sources added or removed) and what its sources read beside it (``toolkit.training.data_inputs``: a chat template's
text, a local source's files added, removed or of another size; recorded as each stage starts); removing the stage
the checkpoint is inside; and always a different tokenizer (the weights and ``final/`` belong to it) and a finished
stage's chat template edited (its weights learned the old one; its settings are the record's, below). What does
not: step or token budgets, learning rates, warmup and other optimisation settings (a finished stage given more
steps is said not to train again); any setting of a finished stage, and its files (each stage's stream is seeded
with ``seed + 1000 * index`` and built from that stage's settings alone, so a finished stage determines nothing
later); the shape and data of
stages that have not started (the resumed run then trains them exactly as a new run of the changed recipe
would, said in one line); stages added after the last; removing stages that had not started. (The run's record,
``recipe.resolved.yaml``, keeps what had trained, though: before this check, a resume that changes what trained the
checkpoint's weights, a finished stage's settings among them, is refused by
:func:`toolkit.training.resume_record.check_record`, so the cases of finished stages here are met only without a
record.)
"""

from __future__ import annotations

import json
from typing import Any

from toolkit.errors import UserError
from toolkit.formatting.numbers import setting_value
from toolkit.parallel.sequence import data_parallel_size
from toolkit.recipe.schema import Recipe
from toolkit.training.data_inputs import Change, input_change, short_sha256, stage_inputs
from toolkit.training.loop import stage_steps
from toolkit.training.resume_record import differences, same_file_moved

VERSION = 2
"""The record's format, for whoever reads a checkpoint; no check reads it, since a field a checkpoint lacks is not
compared (version 1 had no stage ``inputs``)."""
_STAGE_FIELDS = ("seq_len", "batch_size", "grad_accum")


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size and a short hash of the tokenizer's full definition (vocab, merges, normaliser,
    pre-tokenizer, post-processor, added tokens) and its bos/eos/pad ids. Deterministic across processes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)  # per-call settings the wrapper toggles, not the vocabulary
        definition.pop("padding", None)
    else:
        definition = sorted(tokenizer.get_vocab().items())
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    text = json.dumps([definition, specials], sort_keys=True, ensure_ascii=False)
    return {"vocab_size": len(tokenizer), "sha256": short_sha256(text)}


def data_identity(recipe: Recipe, tokenizer: dict[str, Any], num_processes: int) -> dict[str, Any]:
    """What the training data of ``recipe`` depends on; ``tokenizer`` is :func:`tokenizer_identity`'s answer."""
    stages = []
    for i, stage in enumerate(recipe.train.stages):
        stages.append({"name": recipe.train.stage_name(i), "seq_len": stage.seq_len, "batch_size": stage.batch_size,
                       "grad_accum": stage.grad_accum, "data_field": recipe.train.data_field(i),
                       "data": recipe.train.stage_data(i).model_dump(mode="json"),
                       "steps": stage_steps(stage, recipe.train, data_parallel_size(recipe.parallel, num_processes)),
                       "inputs": stage_inputs(recipe.train, i)})
    return {"version": VERSION, "seed": recipe.seed, "processes": num_processes,
            "data_parallel": data_parallel_size(recipe.parallel, num_processes), "tokenizer": tokenizer,
            "stages": stages}


def _show_tokenizer(identity: dict[str, Any]) -> str:
    return f"vocab {identity.get('vocab_size')} (sha256 {identity.get('sha256')})"


def _stop(field: str, old: str, new: str, checkpoint: str, keep: str | None = None) -> UserError:
    return UserError(f"{field}: {old} in the checkpoint ({checkpoint}), {new} now; resuming would change the "
                     f"training data. {keep or f'Keep {old}'}, or start a new run with output.dir=...")


def _check_run_wide(recorded: dict[str, Any], now: dict[str, Any], checkpoint: str, pending: bool) -> None:
    """The settings of the whole run: seed, processes and their layout (while a stage is left to train) and the
    tokenizer (always: the trained weights and final/ belong to one)."""
    if pending and "seed" in recorded and recorded["seed"] != now["seed"]:
        raise _stop("seed", setting_value(recorded["seed"]), setting_value(now["seed"]), checkpoint)
    if pending and "processes" in recorded and recorded["processes"] != now["processes"]:
        raise _stop("processes", str(recorded["processes"]), str(now["processes"]), checkpoint,
                    f"Launch {recorded['processes']} process(es) again")
    if pending and "data_parallel" in recorded and recorded["data_parallel"] != now["data_parallel"]:
        raise _stop("parallel", f"{recorded['data_parallel']} data-parallel group(s)",
                    f"{now['data_parallel']}", checkpoint, "Keep parallel.sequence and parallel.degree as they were")
    old_tok, new_tok = recorded.get("tokenizer"), now["tokenizer"]
    if old_tok is not None and old_tok != new_tok:
        raise _stop("tokenizer", _show_tokenizer(old_tok), _show_tokenizer(new_tok), checkpoint,
                    "Keep the checkpoint's tokenizer (model.tokenizer, model.train_tokenizer; a trained one "
                    "also depends on seed)")


def _stage_change(old: dict[str, Any], new: dict[str, Any], index: int) -> Change | None:
    """The first change between stage ``index``'s record ``old`` and its settings ``new``: one of its
    :data:`_STAGE_FIELDS`, then of its data spec (each value shown as a recipe writes it; put back as it was), then of
    what its sources read (:func:`input_change`)."""
    found = next(((f"train.stages[{index}].{key}", old[key], new[key]) for key in _STAGE_FIELDS
                  if key in old and old[key] != new[key]), None)
    if found is None and "data" in old:
        found = next((change for change in differences(old["data"], new["data"], new["data_field"])
                      if not same_file_moved(change[1], change[2])), None)
    if found is None:
        return input_change(old.get("inputs"), new["inputs"])
    return found[0], setting_value(found[1]), setting_value(found[2]), None


def check_resume(recorded: dict[str, Any] | None, now: dict[str, Any], stage: int, step: int, stage_done: bool,
                 checkpoint: str) -> list[str]:
    """Compare the checkpoint's record with the current recipe's.

    ``stage``, ``step`` and ``stage_done`` say where the checkpoint stands. Raises :class:`UserError` for a
    change that alters the data of the stage it is inside (or a finished stage's chat template); returns one line per
    change that is safe but worth saying (the current stage's step count, stages not yet started that changed or were
    removed).
    """
    if not recorded:
        return [(f"warning: {checkpoint} records no data settings (an older checkpoint); cannot check that "
                 "resuming keeps the same training data")]
    old_stages, new_stages = recorded.get("stages", []), now["stages"]
    pending = [i for i in range(len(old_stages)) if i > stage or (i == stage and not stage_done)]

    _check_run_wide(recorded, now, checkpoint, bool(pending))
    for i in range(min(len(old_stages), len(new_stages))):
        if i not in pending and (edited := input_change(old_stages[i].get("inputs"), new_stages[i]["inputs"],
                                                        files=False)):
            raise _stop(*edited[:3], checkpoint, edited[3])
    notes = [f"stage {i} ({new_stages[i]['name']}): {old_stages[i]['steps']} -> {new_stages[i]['steps']} steps, but "
             "the stage had finished; it is not trained again (a new run with output.dir=... trains it to the new "
             "count)" for i in range(min(len(old_stages), len(new_stages)))
             if i not in pending and old_stages[i].get("steps") not in (None, new_stages[i]["steps"])]
    for i in pending:
        old = old_stages[i]
        if i >= len(new_stages):
            if i == stage:
                raise UserError(f"train.stages[{i}]: the checkpoint ({checkpoint}) is inside stage {i} "
                                f"({old.get('name')}) at step {step}, and the recipe has {len(new_stages)} "
                                f"stage(s) now. Put it back, or start a new run with output.dir=...")
            notes.append(f"stage {i} ({old.get('name')}): removed from the recipe; it had not started")
            continue
        new = new_stages[i]
        found = _stage_change(old, new, i)
        if found and i > stage:
            notes.append(f"stage {i} ({new['name']}): {found[0]} {found[1]} -> {found[2]}; the stage has not "
                         "started, so it trains as a new run of this recipe would")
        elif found:
            raise _stop(*found[:3], checkpoint, found[3])
        if i == stage and old.get("steps") not in (None, new["steps"]):
            if new["steps"] > step:
                notes.append(f"stage {i} ({new['name']}): {old['steps']} -> {new['steps']} steps, the schedule "
                             f"continues from step {step}")
            else:
                notes.append(f"stage {i} ({new['name']}): {old['steps']} -> {new['steps']} steps; {step} are "
                             "done, so the stage ends here")
    return notes
