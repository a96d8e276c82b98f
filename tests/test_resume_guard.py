"""Resume refuses settings that would change the training data, and says so in one line naming the field;
changes that leave the data alone (budgets, learning rates, finished stages, new stages) go through."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import assert_same_weights, final_weights, metrics, train, train_stopped
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.recipe.loading import dump_recipe
from toolkit.recipe.schema import Recipe
from toolkit.run_folder import Change, Resume, read_run_info
from toolkit.training.data_identity import check_resume, data_identity, tokenizer_identity
from toolkit.training.resume_record import TrainerState, check_record, resume_entry

TOKENIZER = {"vocab_size": 320, "sha256": "0123456789abcdef"}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A micro run stopped after 2 steps of stage 0: its run folder holds ``stage-0-step-000002``."""
    folder = tmp_path_factory.mktemp("stopped")
    recipe = write_recipe(folder, dict(MICRO_RECIPE, output={"dir": str(folder / "run")}))
    assert train_stopped(recipe, 2) == 143
    return folder / "run"


@pytest.fixture
def resumable(stopped: Path, tmp_path: Path) -> Path:
    """A copy of the stopped run with the micro recipe pointing at it."""
    shutil.copytree(stopped, tmp_path / "run")
    return write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(tmp_path / "run")}))


def _refused(recipe: Path, capsys, *overrides: str) -> str:
    assert train(recipe, "train.resume=true", *overrides) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    assert "stage-0-step-000002" in err[0] and "resuming would change the training data" in err[0]
    assert not (recipe.parent / "run" / "final").exists()
    return err[0]


def test_checkpoint_records_data_settings(stopped: Path) -> None:
    state = json.loads((stopped / "checkpoints" / "stage-0-step-000002" / "trainer_state.json").read_text())
    data = state["data"]
    assert data["seed"] == 0 and data["processes"] == 1 and data["tokenizer"]["vocab_size"] == 320
    assert [(s["seq_len"], s["batch_size"], s["grad_accum"]) for s in data["stages"]] == [(64, 4, 1), (128, 2, 2)]
    assert data["stages"][0]["data"]["task"] == "passkey" and data["stages"][0]["data"]["loss_on"] == "all"


def test_batch_size_change_is_refused(resumable: Path, capsys) -> None:
    err = _refused(resumable, capsys, "train.stages[0].batch_size=2")
    assert err.startswith("error: train.stages[0].batch_size: 4 in the checkpoint (")
    assert "2 now; resuming would change the training data. Keep 4, or start a new run with output.dir=" in err


def test_seed_change_is_refused(resumable: Path, capsys) -> None:
    assert _refused(resumable, capsys, "seed=1").startswith("error: seed: 0 in the checkpoint (")


def test_data_change_is_refused(resumable: Path, capsys) -> None:
    err = _refused(resumable, capsys, "train.data.min_length_fraction=0.25")
    assert err.startswith("error: train.data.min_length_fraction: 0.5 in the checkpoint (") and "0.25 now" in err


def test_stage_not_started_may_change(resumable: Path, tmp_path: Path, capsys) -> None:
    """A stage the checkpoint has not reached trains on its new settings, as a new run of the recipe would."""
    assert train(resumable, "train.resume=true", "train.stages[1].grad_accum=1") == 0
    assert ("stage 1 (long): train.stages[1].grad_accum 2 -> 1; the stage has not started"
            in capsys.readouterr().out)
    assert train(resumable, "train.stages[1].grad_accum=1", f"output.dir={tmp_path / 'new'}") == 0
    resumed, new = ([r for r in metrics(tmp_path / run) if "loss" in r] for run in ("run", "new"))
    assert [(r["stage"], r["global_step"]) for r in resumed] == [(r["stage"], r["global_step"]) for r in new]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in new], rel=1e-5)
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(tmp_path / "new"), atol=1e-5)


def test_budget_and_lr_changes_resume(resumable: Path, stopped: Path, capsys) -> None:
    """The resume is recorded in ``run_info.json`` with the checkpoint it continued from and each setting it changed,
    with the value the steps before it trained with (the rewritten recipe has the new ones), and the report says so."""
    run = resumable.parent / "run"
    assert train(resumable, "train.resume=true", "train.max_steps=5", "train.stages[0].max_steps=4",
                 "train.stages[1].max_steps=2", "train.stages[0].lr=1e-3", "train.stages[1].warmup_steps=1") == 0
    assert "stage 0 (short): 6 -> 4 steps, the schedule continues from step 2" in capsys.readouterr().out
    assert [r["global_step"] for r in metrics(run)] == list(range(1, 7))
    assert (run / "final").is_dir()
    first, resumed = read_run_info(stopped), read_run_info(run)
    assert resumed.started == first.started and len(resumed.resumed) == 1  # the run's start, and its resume
    entry = resumed.resumed[0]
    assert first.started is not None and entry.at >= first.started and (entry.stage, entry.step) == (0, 2)
    assert [(c.setting, c.before, c.after) for c in entry.changed or []] == [
        ("train.stages[0].max_steps", 6, 4), ("train.stages[0].lr", 0.003, 0.001), ("train.stages[1].max_steps", 4, 2),
        ("train.stages[1].warmup_steps", 0, 1), ("train.max_steps", None, 5),
        ("output.dir", str(stopped), str(run))]  # the folder copied elsewhere; train.resume is no change
    assert main(["report", str(run)]) == 0
    assert (f"Resumed at stage 0 step 2 ({entry.at}): train.stages[0].max_steps 6 -> 4; train.stages[0].lr 0.003 -> "
            "0.001; train.stages[1].max_steps 4 -> 2; train.stages[1].warmup_steps 0 -> 1; train.max_steps unset -> 5; "
            f"output.dir '{stopped}' -> '{run}'.") in (run / "report.md").read_text()


@pytest.mark.parametrize("override", ["model.init_config.hidden_size=32", "method.kind=lora"])
def test_a_model_the_checkpoint_does_not_fit_is_refused_and_the_run_folder_kept(resumable: Path, capsys,
                                                                                  override: str) -> None:
    """A weight of another shape, or weights of another method (LoRA adapters for a full run): refused before the
    model is built, by the run's record (one line with both values), and where the record is missing (a folder of an
    older version) by the checkpoint's weights (one line naming it); the run's recipe and run_info as they were (a
    report would describe another model)."""
    run = resumable.parent / "run"
    before = {name: (run / name).read_bytes() for name in ("recipe.resolved.yaml", "run_info.json")}
    key, value = override.split("=")
    assert train(resumable, "train.resume=true", override) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    shown = repr(value) if key == "method.kind" else value  # a string quoted, a number not
    assert len(err) == 1 and err[0].startswith(f"error: {key} (recorded ") and f", now {shown}): not as in " in err[0]
    assert {name: (run / name).read_bytes() for name in before} == before
    (run / "recipe.resolved.yaml").unlink()
    assert train(resumable, "train.resume=true", override) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {run / 'checkpoints' / 'stage-0-step-000002'} "
                                               "does not fit the model the recipe builds (")
    assert err[0].endswith("resume with the recipe it was saved with (recipe.resolved.yaml in the run folder), or "
                           "start a new run with output.dir=...")
    assert not (run / "recipe.resolved.yaml").exists()
    assert (run / "run_info.json").read_bytes() == before["run_info.json"]
    detail = {"model.init_config.hidden_size=32": "(size mismatch for model.model.embed_tokens.weight: copying a "
              "param with shape torch.Size([320, 64]) from checkpoint, the shape in current model is "
              "torch.Size([320, 32])):", "method.kind=lora": "(first key: "}[override]
    assert detail in err[0]


def test_a_checkpoint_state_cut_short_is_one_line_naming_it(resumable: Path, capsys) -> None:
    state = resumable.parent / "run" / "checkpoints" / "stage-0-step-000002" / "trainer_state.json"
    state.write_text('{"stage": 0, "step"')
    assert train(resumable, "train.resume=true") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err == [f"error: {state}:1: not valid JSON (Expecting ':' delimiter)"]


# the comparison itself, without training


def _identity(change=None, processes: int = 1, tokenizer=TOKENIZER) -> dict:
    raw = copy.deepcopy(MICRO_RECIPE)
    if change:
        change(raw)
    return data_identity(Recipe.model_validate(raw), tokenizer, processes)


def _check(recorded: dict | None, now: dict, stage: int = 0, step: int = 2, done: bool = False) -> list[str]:
    return check_resume(recorded, now, stage, step, done, "runs/x/checkpoints/stage-0-step-000002")


def _refusal(recorded: dict, now: dict, **where) -> str:
    with pytest.raises(UserError) as caught:
        _check(recorded, now, **where)
    message = str(caught.value)
    assert "\n" not in message and "(runs/x/checkpoints/stage-0-step-000002)" in message
    return message


def test_same_settings_pass() -> None:
    assert _check(_identity(), _identity()) == []


def test_old_checkpoint_warns() -> None:
    notes = _check(None, _identity())
    assert len(notes) == 1 and notes[0].startswith("warning:") and "older checkpoint" in notes[0]


def test_refusals_name_the_field() -> None:
    base = _identity()

    def stage(i, key, value):
        return lambda r: r["train"]["stages"][i].__setitem__(key, value)

    assert _refusal(base, _identity(stage(0, "seq_len", 32))).startswith(
        "train.stages[0].seq_len: 64 in the checkpoint (runs/x/checkpoints/stage-0-step-000002), 32 now; "
        "resuming would change the training data. Keep 64, or start a new run with output.dir=...")
    assert _refusal(base, _identity(stage(1, "batch_size", 4)), stage=1).startswith(
        "train.stages[1].batch_size: 2 in")
    assert _refusal(base, _identity(lambda r: r.__setitem__("seed", 7))).startswith("seed: 0 in the checkpoint")
    assert _refusal(base, _identity(processes=2)).startswith("processes: 1 in the checkpoint")
    assert "Launch 1 process(es) again" in _refusal(base, _identity(processes=2))
    def layout(degree: int):  # 4 processes: 4 data-parallel groups, or 2 sharing each sequence in pairs
        def change(r):
            r["train"]["stages"][1]["batch_size"] = 4  # Ulysses: one micro-batch size for every stage
            if degree > 1:
                r["parallel"] = {"sequence": "ulysses", "degree": degree}
        return change

    four, paired = _identity(layout(1), processes=4), _identity(layout(2), processes=4)
    assert _refusal(four, paired) == (
        "parallel: 4 data-parallel group(s) in the checkpoint (runs/x/checkpoints/stage-0-step-000002), 2 now; "
        "resuming would change the training data. Keep parallel.sequence and parallel.degree as they were, or start "
        "a new run with output.dir=...")
    other = {"vocab_size": 320, "sha256": "fedcba9876543210"}
    assert _refusal(base, _identity(tokenizer=other)).startswith("tokenizer: vocab 320 (sha256 0123456789abcdef)")
    assert _refusal(base, _identity(lambda r: r["train"]["data"].__setitem__("task", "multikey"))).startswith(
        "train.data.task: 'passkey' in the checkpoint")
    # stage 1 now has data of its own that differs from what it would have read from train.data
    own = dict(MICRO_RECIPE["train"]["data"], loss_on="answer")
    assert _refusal(base, _identity(stage(1, "data", own)), stage=1).startswith(
        "train.stages[1].data.loss_on: 'all' in the checkpoint")
    # the same changes before stage 1 has started are not refused: it trains on its new settings
    assert _check(base, _identity(stage(1, "data", own))) == [
        "stage 1 (long): train.stages[1].data.loss_on 'all' -> 'answer'; the stage has not started, so it trains "
        "as a new run of this recipe would"]


def test_allowed_changes() -> None:
    base = _identity()

    def stages(r):
        r["train"]["max_steps"] = 3
        r["train"]["stages"][0]["lr"] = 1e-4
        r["train"]["stages"][1]["warmup_steps"] = 2
        r["train"]["stages"][1]["name"] = "renamed"
        r["train"]["stages"][1]["max_steps"] = None
        r["train"]["stages"][1]["max_tokens"] = 10_000
        r["train"]["data"]["packing"] = "pack"  # same as the default: no change
        r["train"]["stages"].append({"name": "longer", "seq_len": 256, "max_steps": 2, "batch_size": 1,
                                     "rope": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}})

    notes = _check(base, _identity(stages))
    assert notes == ["stage 0 (short): 6 -> 3 steps, the schedule continues from step 2"]
    ends = "stage 0 (short): 6 -> 3 steps; 4 are done, so the stage ends here"
    assert _check(base, _identity(stages), step=4) == [ends]


def test_finished_stages_do_not_matter() -> None:
    base = _identity()

    def finished(r):
        r["train"]["stages"][0].update(batch_size=2, seq_len=32, data={"source": "synthetic", "task": "multikey"})

    assert _check(base, _identity(finished), stage=1, step=2) == []
    assert _check(base, _identity(finished), stage=0, step=6, done=True) == []
    with pytest.raises(UserError, match=r"^train.stages\[0\].seq_len: 64"):
        _check(base, _identity(finished), stage=0, step=6, done=False)
    # everything finished: seed and processes change no data any more (the tokenizer still must match)
    everything: dict[str, Any] = {"stage": 1, "step": 4, "done": True}
    assert _check(base, _identity(lambda r: r.__setitem__("seed", 3), processes=2), **everything) == []
    with pytest.raises(UserError, match=r"^tokenizer: "):
        _check(base, _identity(tokenizer={"vocab_size": 512, "sha256": "x"}), **everything)
    # data shared through train.data: stage 0 finished and stage 1 keeps its old data by owning it
    moved = dict(MICRO_RECIPE["train"]["data"])
    assert _check(base, _identity(lambda r: (r["train"]["data"].__setitem__("task", "multikey"),
                                             r["train"]["stages"][1].__setitem__("data", moved))), stage=1) == []


def test_a_finished_stage_given_more_steps_is_said_not_to_train_again() -> None:
    base = _identity()
    longer = _identity(lambda r: r["train"]["stages"][0].__setitem__("max_steps", 9))
    assert _check(base, longer, stage=0, step=6, done=True) == [
        "stage 0 (short): 6 -> 9 steps, but the stage had finished; it is not trained again (a new run with "
        "output.dir=... trains it to the new count)"]
    assert _check(base, longer, stage=1, step=2) == _check(base, longer, stage=0, step=6, done=True)
    assert _check(base, longer, stage=0, step=3) == ["stage 0 (short): 6 -> 9 steps, the schedule continues from "
                                                     "step 3"]


def test_removed_stages() -> None:
    base = _identity()

    def drop_last(r):
        r["train"]["stages"].pop()

    assert _check(base, _identity(drop_last)) == ["stage 1 (long): removed from the recipe; it had not started"]
    with pytest.raises(UserError, match=r"^train.stages\[1\]: the checkpoint .* is inside stage 1 \(long\) at step 2"):
        _check(base, _identity(drop_last), stage=1, step=2)


def test_missing_keys_are_not_compared() -> None:
    """A checkpoint written before a data field existed does not refuse a resume over that field."""
    base = _identity()
    for stage in base["stages"]:
        del stage["data"]["num_keys"]
    del base["stages"][0]["steps"]
    assert _check(base, _identity(lambda r: r["train"]["data"].__setitem__("num_keys", 6))) == []


def _reading(template: str = "0123456789abcdef", files: dict | None = None, stage: int | None = None) -> dict:
    """The micro recipe's identity with its sources reading ``template`` and ``files`` (every stage's, or ``stage``'s
    alone, the others reading the defaults)."""
    identity = _identity()
    for i, record in enumerate(identity["stages"]):
        changed = stage is None or i == stage
        record["inputs"] = [{"field": "train.data", "chat_template": template if changed else "0123456789abcdef",
                             "files": (files if changed and files is not None else {"a.jsonl": 10, "sub/b.jsonl": 20})}]
    return identity


def test_what_a_stage_reads_is_compared_as_its_settings_are() -> None:
    """A chat template edited, a file added, removed or resized: refused inside the stage, said of a stage not started
    (it trains on them as a new run would); a finished stage's template is refused (its weights learned the old one),
    its files are not (it reads them no more); an older record without them compares nothing."""
    base, resized = _reading(), {"a.jsonl": 10, "sub/b.jsonl": 21}
    assert _check(base, _reading()) == []
    assert _refusal(base, _reading(files=resized)) == (
        "train.data.path: sub/b.jsonl of 20 bytes in the checkpoint (runs/x/checkpoints/stage-0-step-000002), "
        "sub/b.jsonl of 21 bytes now; resuming would change the training data. Put the source's files back as they "
        "were, or start a new run with output.dir=...")
    assert _refusal(base, _reading(files={"a.jsonl": 10})).startswith(
        "train.data.path: sub/b.jsonl of 20 bytes in the checkpoint (runs/x/checkpoints/stage-0-step-000002), no "
        "sub/b.jsonl now;")
    assert _refusal(base, _reading(template="fedcba9876543210")) == (
        "train.data.chat_template: sha256 0123456789abcdef in the checkpoint (runs/x/checkpoints/stage-0-step-000002), "
        "sha256 fedcba9876543210 now; resuming would change the training data. Put the template back as it was, or "
        "start a new run with output.dir=...")
    assert _check(base, _reading(files=resized, stage=1)) == [
        "stage 1 (long): train.data.path sub/b.jsonl of 20 bytes -> sub/b.jsonl of 21 bytes; the stage has not "
        "started, so it trains as a new run of this recipe would"]
    assert _refusal(base, _reading(files=resized, stage=1), stage=1).startswith("train.data.path: sub/b.jsonl of 20")
    assert _check(base, _reading(files=resized, stage=0), stage=1) == []
    assert _refusal(base, _reading(template="fedcba9876543210", stage=0), stage=1).startswith(
        "train.data.chat_template: sha256 0123456789abcdef in the checkpoint")
    older = _identity()  # version 1 recorded no inputs
    for record in older["stages"]:
        del record["inputs"]
    assert _check(older, _reading(template="fedcba9876543210", files=resized)) == []


def test_a_data_folder_moved_to_another_machine_is_the_same_source(tmp_path: Path) -> None:
    """A source's absolute path of the same name elsewhere (the run folder and its data moved) reads the same files
    (their names and sizes say so); a source of another name is another source."""
    def at(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"text": "a book"}\n')

        def change(r):
            r["train"]["stages"][0]["data"] = {"source": "jsonl", "path": str(path), "format": "text"}
        return change

    base = _identity(at(tmp_path / "a" / "books.jsonl"))
    assert _check(base, _identity(at(tmp_path / "b" / "books.jsonl"))) == []
    assert _refusal(base, _identity(at(tmp_path / "a" / "other.jsonl"))).startswith(
        f"train.stages[0].data.path: '{tmp_path}/a/books.jsonl' in the checkpoint")


def test_tokenizer_identity_is_stable_and_sensitive() -> None:
    from toolkit.data.tokenizer import train_tokenizer
    from toolkit.recipe.schema import TokenizerTraining

    spec = TokenizerTraining(vocab_size=320, corpus_documents=200)
    first, again = train_tokenizer(spec, 0), train_tokenizer(spec, 0)
    first("a passkey 12345", truncation=True, max_length=4)  # per-call settings do not count
    assert tokenizer_identity(first) == tokenizer_identity(again)
    assert tokenizer_identity(first) != tokenizer_identity(train_tokenizer(spec, 1))
    assert tokenizer_identity(train_tokenizer(TokenizerTraining(vocab_size=300, corpus_documents=200), 0))[
        "vocab_size"] == 300


def test_checkpoint_state_round_trip(tmp_path: Path) -> None:
    from accelerate import Accelerator

    from toolkit.training.checkpoints import CheckpointManager

    manager = CheckpointManager(tmp_path, 2, Accelerator(cpu=True))
    manager.data_identity = _identity()
    manager.save(TrainerState(0, 1, 1))
    latest = manager.latest()
    assert latest is not None
    _, state = latest
    assert state == TrainerState(0, 1, 1) and state.data == _identity()
    legacy = tmp_path / "checkpoints" / "stage-0-step-000002"
    legacy.mkdir()
    (legacy / "trainer_state.json").write_text(json.dumps({"stage": 0, "step": 2, "global_step": 2,
                                                           "stage_done": False}))
    latest = manager.latest()
    assert latest == (legacy, TrainerState(0, 2, 2)) and latest[1].data is None


# the run's record (recipe.resolved.yaml) of what trained


def test_a_finished_run_resumed_with_other_settings_is_refused_and_its_record_kept(uninterrupted: Path,
                                                                                     tmp_path: Path, capsys) -> None:
    """Every stage had finished: a resume trains nothing with changed settings, so it would record settings never
    trained (the report's recipe table, predict, export read that record); one line names them, nothing is
    written. Settings that train nothing (eval, checkpoints kept) go through."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(run)}))
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    changed = ("train.save_every=2", "train.resume=true", "train.stages[0].lr=0.5", "train.stages[1].max_steps=9",
               "train.weight_decay=0.1")
    refusal = ("train.weight_decay (recorded 0.0, now 0.1); train.stages[0].lr (recorded 0.003, now 0.5); "
               f"train.stages[1].max_steps (recorded 4, now 9): not as in {run / 'recipe.resolved.yaml'}, the record "
               "of what trained (every stage, finished): those weights trained with the recorded settings, and a "
               "resume would record settings they never had. Put them back, or start a new run with output.dir=...")
    assert main(["validate", str(recipe), *(arg for value in changed for arg in ("--set", value))]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {recipe}: {refusal}"]  # as train refuses it
    assert train(recipe, *changed) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("error: ")] == [f"error: {refusal}"]
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before
    assert train(recipe, "train.stages[0].lr=0.5") == 2  # not resumed: what continuing it takes is said
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and err[0].endswith(": set train.resume=true to continue that run, its recipe as its record "
                                             "has it (train.stages[0].lr (recorded 0.003, now 0.5)), or "
                                             "output.dir=... for a new one"), err
    assert train(recipe, "train.resume=true", "train.keep_last=3", "eval.before=false") == 0


def _recorded(tmp_path: Path, state: TrainerState, change=None) -> str | None:
    """The fields, each with its recorded and new value, of the refusal of a recipe changed by ``change`` over the
    micro recipe's record, at a checkpoint of ``state`` (None: resumed)."""
    (tmp_path / "run").mkdir(exist_ok=True)
    raw = dict(MICRO_RECIPE, output={"dir": str(tmp_path / "run")})
    dump_recipe(Recipe.model_validate(raw), tmp_path / "run" / "recipe.resolved.yaml")
    raw = copy.deepcopy(raw)
    if change:
        change(raw)
    try:
        check_record(Recipe.model_validate(raw), state)
    except UserError as refused:
        return str(refused).split(": not as in ")[0]
    return None


def test_a_finished_stage_keeps_its_recorded_settings(tmp_path: Path) -> None:
    """Stage 0 finished, stage 1 to come: what trained stage 0 (its settings and data: ``train.data``, which it reads;
    the run-wide optimisation, the method, the model) is as recorded, each named where the recipe holds it with both
    values; what stage 1 trains with may change, as the checkpoint's data check allows (a changed seed is that
    check's); once every stage is done, the seed too. Stages never started may be dropped or added."""
    inside = TrainerState(stage=1, step=2, global_step=8)
    assert _recorded(tmp_path, inside) is None
    assert _recorded(tmp_path, inside, lambda r: r["train"]["stages"][0].update(lr=0.5, batch_size=2)) == (
        "train.stages[0].lr (recorded 0.003, now 0.5); train.stages[0].batch_size (recorded 4, now 2)")
    assert _recorded(tmp_path, inside, lambda r: r["train"]["data"].update(task="multikey")) == (
        "train.data.task (recorded 'passkey', now 'multikey')")
    assert _recorded(tmp_path, inside, lambda r: r["train"].update(max_steps=3)) == (
        "train.max_steps (recorded unset, now 3)")
    assert _recorded(tmp_path, inside, lambda r: r["train"].update(weight_decay=0.1)) == (
        "train.weight_decay (recorded 0.0, now 0.1)")
    assert _recorded(tmp_path, inside, lambda r: r.update(method={"kind": "lora"})) == (
        "method.kind (recorded 'full', now 'lora')")
    assert _recorded(tmp_path, inside, lambda r: r.update(seed=3)) is None  # the data check names it
    assert _recorded(tmp_path, inside, lambda r: r["train"]["stages"][1].update(lr=0.5, max_steps=9)) is None
    assert _recorded(tmp_path, inside, lambda r: r["train"]["stages"].pop()) is None  # stage 1 had not started
    done = TrainerState(stage=1, step=4, global_step=10, stage_done=True)
    assert _recorded(tmp_path, done, lambda r: r.update(seed=3)) == "seed (recorded 0, now 3)"
    longer = {"name": "longer", "seq_len": 256, "max_steps": 2, "batch_size": 1,
              "rope": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}
    assert _recorded(tmp_path, done, lambda r: r["train"]["stages"].append(longer)) is None
    first = TrainerState(stage=0, step=2, global_step=2)  # inside stage 0: its weights are of the recorded model
    assert _recorded(tmp_path, first, lambda r: r["train"].update(weight_decay=0.1, max_steps=3)) is None
    assert _recorded(tmp_path, first, lambda r: r.update(method={"kind": "lora"})) == (
        "method.kind (recorded 'full', now 'lora')")
    assert _recorded(tmp_path, first, lambda r: r["model"]["init_config"].update(rms_norm_eps=0.5)) == (
        "model.init_config.rms_norm_eps (recorded unset, now 0.5)")


def test_a_resume_entry_names_each_setting_changed_with_both_values(tmp_path: Path) -> None:
    """Every setting in which the recipe differs from the run's record, the ones no weight depends on too, by its
    path with the recorded and the new value; ``train.resume`` (how this start treats the folder) is none. Without a
    record the changes are unknown."""
    run = tmp_path / "run"
    run.mkdir()
    raw = {**MICRO_RECIPE, "output": {"dir": str(run)}}
    state = TrainerState(stage=1, step=3, global_step=9)
    assert resume_entry(Recipe.model_validate(raw), state, "2025-01-02T03:04:05+00:00") == Resume(
        at="2025-01-02T03:04:05+00:00", stage=1, step=3, changed=None)
    dump_recipe(Recipe.model_validate(raw), run / "recipe.resolved.yaml")
    assert resume_entry(Recipe.model_validate(raw), state, "now").changed == []
    changed = {**copy.deepcopy(raw), "eval": {"suites": ["core"]}}
    _merged(changed, {"seed": 3, "model": {"attention": "eager"},
                      "train": {"resume": True, "stages": [{}, {"rope": {"factor": 4.0}}]}})
    assert resume_entry(Recipe.model_validate(changed), state, "now").changed == [
        Change(setting="seed", before=0, after=3), Change(setting="model.attention", before="auto", after="eager"),
        Change(setting="train.stages[1].rope.factor", before=2.0, after=4.0),
        Change(setting="eval.suites", before=[], after=["core"])]


def _merged(into: dict, part: dict) -> None:
    """``part`` written into ``into``, nested blocks and lists of blocks item by item."""
    for key, value in part.items():
        if isinstance(value, dict):
            _merged(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            for target, item in zip(into[key], value, strict=True):
                _merged(target, item)
        else:
            into[key] = value


@pytest.mark.parametrize("change", [
    {"parallel": {"timeout_minutes": 240}}, {"model": {"attention": "eager"}}, {"eval": {"after_each_stage": False}},
    {"train": {"gradient_checkpointing": True, "loss_chunk_size": 32, "keep_last": 5, "save_every": 1}},
    {"train": {"stages": [{"evaluate": False, "name": "first"}, {}]}}])
def test_what_changes_no_weight_may_change_on_resume(change: dict, tmp_path: Path) -> None:
    """The evaluations, the attention kernel, memory switches, checkpoints and the processes' timeout (raised to
    resume a run stopped in a long evaluation) change how a run computes or what it writes, not what it learned."""
    done = TrainerState(stage=1, step=4, global_step=10, stage_done=True)
    assert _recorded(tmp_path, done, lambda r: _merged(r, change)) is None


def test_a_run_folder_read_on_another_machine_resumes(tmp_path: Path) -> None:
    """The record's local paths name the folders of the machine that wrote it: a file of the same name elsewhere (the
    repository moved) is the same setting; another file is not."""
    done = TrainerState(stage=1, step=4, global_step=10, stage_done=True)
    given = {"tokenizer": "/home/a/repo/models/tok", "train_tokenizer": None}
    (tmp_path / "run").mkdir()
    raw = {**MICRO_RECIPE, "model": {**MICRO_RECIPE["model"], **given}, "output": {"dir": str(tmp_path / "run")}}
    dump_recipe(Recipe.model_validate(raw), tmp_path / "run" / "recipe.resolved.yaml")
    check_record(Recipe.model_validate(_with_tokenizer(raw, "/srv/b/repo/models/tok")), done)
    with pytest.raises(UserError, match=r"^model.tokenizer \(recorded '/home/a/repo/models/tok', now '/home/a/other'"):
        check_record(Recipe.model_validate(_with_tokenizer(raw, "/home/a/other")), done)


def _with_tokenizer(raw: dict, tokenizer: str) -> dict:
    return {**raw, "model": {**raw["model"], "tokenizer": tokenizer}}


def test_a_run_info_that_cannot_be_read_is_written_afresh_on_resume(resumable: Path, stopped: Path, capsys) -> None:
    """``run_info.json`` informs (when the run started, the environment): garbage in it is a warning naming it, and the
    resume writes a fresh one, started now."""
    info = resumable.parent / "run" / "run_info.json"
    info.write_text("garbage{")
    assert train(resumable, "train.resume=true") == 0
    assert f"{info}:1: not valid JSON (Expecting value); writing it afresh" in capsys.readouterr().err
    assert (resumable.parent / "run" / "final").is_dir()
    first, fresh = read_run_info(stopped), read_run_info(resumable.parent / "run")
    assert fresh.started is not None and first.started is not None and fresh.started >= first.started
    assert [(r.at, r.stage, r.step) for r in fresh.resumed] == [(fresh.started, 0, 2)]  # the one start it knows of
