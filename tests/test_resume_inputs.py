"""A resume checks what the checkpoint trained on beyond the recipe's settings: the base model a LoRA adapter goes on
(its folder's config.json and weight files' names and sizes, or a hub id's cached snapshot), refused when another one
is there now, by ``train`` before the weights load and by ``validate`` as ``train`` refuses it; and what the stage in
progress reads (its chat template's text, its files' names and sizes), refused by ``train`` when it changed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import train, train_stopped
from tests.test_data_chat import CONVERSATION, TEMPLATE
from toolkit.cli import main
from toolkit.data.tokenizer import load_tokenizer
from toolkit.model.loading import build_random
from toolkit.model.sources import base_identity, folder_digest
from toolkit.recipe.schema import ModelSpec, Recipe
from toolkit.training.data_inputs import short_sha256, stage_inputs

CHECKPOINT = "stage-0-step-000002"


def _model_folder(folder: Path) -> Path:
    """The micro recipe's model and tokenizer saved in ``folder``."""
    spec = ModelSpec.model_validate(MICRO_RECIPE["model"])
    tokenizer = load_tokenizer(spec, seed=0)
    assert spec.init_config is not None
    model = build_random(spec.init_config, tokenizer, "sdpa", torch.float32, seed=0, device=torch.device("cpu"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run on a local model folder, its chat data a folder of two JSONL files rendered with a ``.jinja``
    template, stopped after 2 of its 6 steps; returns its recipe (beside ``base/``, ``chats/``, ``chat.jinja`` and
    ``run/``). A test may change an input to see the resume refused, and puts it back (:func:`_changed`)."""
    folder = tmp_path_factory.mktemp("inputs")
    _model_folder(folder / "base")
    (folder / "chats").mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (folder / "chats" / name).write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (folder / "chat.jinja").write_text(TEMPLATE)
    recipe = write_recipe(folder, {
        "name": "inputs", "seed": 0, "output": {"dir": str(folder / "run")},
        "model": {"name_or_path": str(folder / "base"), "precision": "fp32"},
        "method": {"kind": "lora", "lora": {"r": 4}},
        "train": {"loss_chunk_size": 48, "stages": [{"name": "sft", "seq_len": 128, "max_steps": 6, "lr": 1e-3,
                                                     "batch_size": 2}],
                  "data": {"source": "jsonl", "path": "chats", "format": "chat", "chat_template": "chat.jinja"}},
        "logging": {"every": 1}})
    assert train_stopped(recipe, 2) == 143
    return recipe


@contextmanager
def _changed(path: Path, content: bytes | None) -> Iterator[None]:
    """The file at ``path`` holding ``content`` (None: removed) for the ``with`` block, then as it was (or absent)."""
    before = path.read_bytes() if path.exists() else None
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    try:
        yield
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)


def _state(recipe: Path) -> dict:
    return json.loads((recipe.parent / "run" / "checkpoints" / CHECKPOINT / "trainer_state.json").read_text())


def _refusal(recipe: Path, capsys) -> str:
    """The one error line of ``train`` resuming the run (exit 2), which leaves the run folder as it was."""
    run = recipe.parent / "run"
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    assert train(recipe, "train.resume=true") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before
    assert len(err) == 1, err
    return err[0].removeprefix("error: ")


def _validated(recipe: Path, capsys) -> list[str]:
    """What ``validate`` says on stderr of the recipe resuming the run."""
    main(["validate", str(recipe), "--set", "train.resume=true"])
    return capsys.readouterr().err.splitlines()


def test_the_checkpoint_records_its_base_model(stopped: Path) -> None:
    base = stopped.parent / "base"
    assert _state(stopped)["base"] == f"sha256 {folder_digest(base)}"
    assert base_identity(ModelSpec(name_or_path=str(base))) == f"sha256 {folder_digest(base)}"


def test_another_base_model_is_refused_by_validate_and_train(stopped: Path, capsys) -> None:
    base = stopped.parent / "base"
    recorded = _state(stopped)["base"]
    config = json.loads((base / "config.json").read_text())
    with _changed(base / "config.json", json.dumps({**config, "rms_norm_eps": 0.5}).encode()):
        now = f"sha256 {folder_digest(base)}"
        assert now != recorded
        line = (f"model.name_or_path: {base} is not the model the checkpoint ({stopped.parent / 'run' / 'checkpoints'}"
                f"/{CHECKPOINT}) trained from: its config.json and weight files' names and sizes give {recorded} in "
                f"the checkpoint, {now} now. Restore that model, or start a new run with output.dir=...")
        assert _validated(stopped, capsys) == [f"error: {stopped}: {line}"]
        assert _refusal(stopped, capsys) == line
        older = {key: value for key, value in _state(stopped).items() if key != "base"}  # before bases were recorded
        with _changed(stopped.parent / "run" / "checkpoints" / CHECKPOINT / "trainer_state.json",
                      json.dumps(older).encode()):
            assert _validated(stopped, capsys) == []


def test_a_folder_digest_reads_config_and_weight_sizes(tmp_path: Path) -> None:
    """The same for a copy elsewhere; another once a weight file changes size, or another is added, or config.json
    changes; files that are no weights do not count, nor .bin files beside safetensors (transformers loads those)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 50)
    first = folder_digest(folder)
    assert len(first) == 16 and folder_digest(shutil.copytree(folder, tmp_path / "elsewhere")) == first
    (folder / "README.md").write_text("notes")
    assert folder_digest(folder) == first
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\1" * 50)  # same size: not read
    assert folder_digest(folder) == first
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 51)
    resized = folder_digest(folder)
    assert resized != first
    (folder / "pytorch_model.bin").write_bytes(b"\0")  # beside safetensors: transformers loads those
    assert folder_digest(folder) == resized
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    assert folder_digest(folder) not in (first, resized)
    (folder / "config.json").write_text('{"hidden_size": 65}')
    assert folder_digest(folder) not in (first, resized)


def test_a_hub_model_is_its_cached_snapshot(tmp_path: Path, monkeypatch) -> None:
    """A hub id: the snapshot its revision (main by default) resolves to in the Hugging Face cache, read offline; None
    while it is not cached whole (``train`` records it once loaded), and for a random init."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = ModelSpec(name_or_path="org/model")
    assert base_identity(spec) is None
    repo = tmp_path / "models--org--model"
    for commit, size in (("a" * 40, 10), ("b" * 40, 20)):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"\0" * size)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    assert base_identity(spec) == f"sha256 {folder_digest(repo / 'snapshots' / ('b' * 40))}"
    assert base_identity(ModelSpec(name_or_path="org/model", revision="a" * 40)) == (
        f"sha256 {folder_digest(repo / 'snapshots' / ('a' * 40))}")
    assert base_identity(ModelSpec.model_validate(MICRO_RECIPE["model"])) is None
    sharded = repo / "snapshots" / ("c" * 40)  # a download cut short: one shard of two
    sharded.mkdir()
    (sharded / "config.json").write_text("{}")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    at_c = ModelSpec(name_or_path="org/model", revision="c" * 40)
    assert base_identity(at_c) is None
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"\0")
    assert base_identity(at_c) == f"sha256 {folder_digest(sharded)}"


def test_the_checkpoint_records_what_its_stage_reads(stopped: Path) -> None:
    data = _state(stopped)["data"]
    size = len(json.dumps({"messages": CONVERSATION})) + 1
    assert data["version"] == 2
    assert data["stages"][0]["inputs"] == [{"field": "train.data", "chat_template": short_sha256(TEMPLATE),
                                            "files": {"a.jsonl": size, "b.jsonl": size}}]


def _stopped_with(recipe: Path, field: str, was: str, now: str, remedy: str) -> str:
    """The refusal of a resume of the stopped run over ``field``, ``was`` in its checkpoint and ``now``."""
    checkpoint = recipe.parent / "run" / "checkpoints" / CHECKPOINT
    return (f"{field}: {was} in the checkpoint ({checkpoint}), {now} now; resuming would change the training data. "
            f"{remedy}, or start a new run with output.dir=...")


def test_an_edited_chat_template_is_refused(stopped: Path, capsys) -> None:
    template = stopped.parent / "chat.jinja"
    with _changed(template, (TEMPLATE + "\n").encode()):
        assert _refusal(stopped, capsys) == _stopped_with(
            stopped, "train.data.chat_template", f"sha256 {short_sha256(TEMPLATE)}",
            f"sha256 {short_sha256(TEMPLATE + chr(10))}", "Put the template back as it was")


@pytest.mark.parametrize("change", ["added", "resized", "removed"])
def test_a_file_added_removed_or_resized_is_refused_naming_it(stopped: Path, capsys, change: str) -> None:
    chats = stopped.parent / "chats"
    size = (chats / "b.jsonl").stat().st_size
    line = json.dumps({"messages": CONVERSATION}) + "\n"
    path, content, was, now = {
        "added": (chats / "c.jsonl", line, "no c.jsonl", f"c.jsonl of {size} bytes"),
        "resized": (chats / "b.jsonl", line * 2, f"b.jsonl of {size} bytes", f"b.jsonl of {2 * size} bytes"),
        "removed": (chats / "a.jsonl", None, f"a.jsonl of {size} bytes", "no a.jsonl")}[change]
    with _changed(path, None if content is None else content.encode()):
        assert _refusal(stopped, capsys) == _stopped_with(stopped, "train.data.path", was, now,
                                                          "Put the source's files back as they were")


def test_files_are_named_relative_to_their_source(tmp_path: Path) -> None:
    """A folder's files by their path below it, a file by its name: the same for the inputs moved elsewhere."""
    for place in ("here", "there"):
        (tmp_path / place / "chats" / "sub").mkdir(parents=True)
        (tmp_path / place / "chats" / "a.jsonl").write_text("{}\n")
        (tmp_path / place / "chats" / "sub" / "b.jsonl").write_text("{}\n{}\n")
        (tmp_path / place / "one.jsonl").write_text("{}\n")
        (tmp_path / place / "chat.jinja").write_text(TEMPLATE)

    def inputs(place: Path) -> list[dict]:
        mixture = [{"source": "jsonl", "path": str(place / "chats"), "format": "chat", "weight": 1.0,
                    "chat_template": str(place / "chat.jinja")},
                   {"source": "jsonl", "path": str(place / "one.jsonl"), "weight": 1.0}]
        raw = {**MICRO_RECIPE, "train": {**MICRO_RECIPE["train"], "data": {"mixture": mixture}}}
        return stage_inputs(Recipe.model_validate(raw).train, 0)

    assert inputs(tmp_path / "here") == inputs(tmp_path / "there") == [
        {"field": "train.data.mixture[0]", "chat_template": short_sha256(TEMPLATE),
         "files": {"a.jsonl": 3, "sub/b.jsonl": 6}},
        {"field": "train.data.mixture[1]", "files": {"one.jsonl": 3}}]


def test_a_run_whose_inputs_are_as_they_were_resumes(stopped: Path) -> None:
    """Last: it finishes the stopped run."""
    assert train(stopped, "train.resume=true") == 0
    assert (stopped.parent / "run" / "final").is_dir()
