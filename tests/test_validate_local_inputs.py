"""``validate`` checks the local inputs ``train`` would stop at (data files, chat templates, a model folder,
output.dir) with train's own checks, offline and loading no model, and makes nothing."""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import ROOT
from toolkit.cli import main
from toolkit.recipe.loading import dump_recipe
from toolkit.recipe.schema import Recipe


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], **changes: Any) -> str:
    """The one line ``validate`` prints for MICRO_RECIPE with ``changes`` (exit 2), without ``error: <recipe>: ``."""
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, **changes))
    assert main(["validate", str(recipe)]) == 2
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1 and err.startswith(f"error: {recipe}: "), err
    return err.removeprefix(f"error: {recipe}: ").rstrip("\n")


def _file(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _gzip_cut_or_damaged(cut: bool) -> bytes:
    """One long JSONL line gzip'd, then cut in half (a download stopped) or with bytes of its middle overwritten."""
    text = "".join(random.Random(0).choice("abcdefgh ") for _ in range(200_000))
    packed = bytearray(gzip.compress(f'{{"text": "{text}"}}\n'.encode()))
    if cut:
        return bytes(packed[:len(packed) // 2])
    packed[len(packed) // 2:len(packed) // 2 + 64] = bytes(range(64))
    return bytes(packed)


def _with_stage_mixture(tmp: Path) -> dict[str, Any]:
    """The second stage reads its own mixture, whose second source is not there."""
    mixture = [{"name": "a", "weight": 1, "source": "jsonl", "path": _file(tmp / "a.jsonl", '{"text": "x"}\n')},
               {"name": "b", "weight": 1, "source": "jsonl", "path": str(tmp / "gone.jsonl")}]
    stages = [MICRO_RECIPE["train"]["stages"][0], {**MICRO_RECIPE["train"]["stages"][1], "data": {"mixture": mixture}}]
    return {**MICRO_RECIPE["train"], "stages": stages}


DATA_MISTAKES: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "missing file": (lambda tmp: {"source": "csv", "path": str(tmp / "nope.csv")},
                     "train.data.path: no such file: {tmp}/nope.csv"),
    "folder without its format's files": (lambda tmp: {"source": "parquet", "path": str(tmp)},
                                          "train.data.path: no .parquet files in {tmp}"),
    "first record does not parse": (lambda tmp: {"source": "jsonl", "path": _file(tmp / "bad.jsonl", "{broken\n")},
                                    "train.data.path: cannot read {tmp}/bad.jsonl: line 1: "),
    "not UTF-8": (lambda tmp: {"source": "jsonl", "path": _file(tmp / "latin.jsonl", b'{"text": "\xe9"}\n')},
                  "train.data.path: cannot read {tmp}/latin.jsonl: "),
    "gzip cut short": (lambda tmp: {"source": "jsonl", "path": _file(tmp / "cut.jsonl.gz", _gzip_cut_or_damaged(True))},
                       "train.data.path: cannot read {tmp}/cut.jsonl.gz: "),
    "gzip damaged": (lambda tmp: {"source": "jsonl", "path": _file(tmp / "bad.jsonl.gz", _gzip_cut_or_damaged(False))},
                     "train.data.path: cannot read {tmp}/bad.jsonl.gz: "),
    "no records": (lambda tmp: {"source": "csv", "path": _file(tmp / "empty.csv", "text\n")},
                   "train.data.path: no records in {tmp}/empty.csv"),
}


@pytest.mark.parametrize("case", sorted(DATA_MISTAKES))
def test_a_local_data_source_train_would_stop_at(case: str, tmp_path: Path, capsys) -> None:
    data, expected = DATA_MISTAKES[case]
    line = _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": data(tmp_path)})
    assert line.startswith(expected.format(tmp=tmp_path))


def _records_without_the_text_field(tmp: Path) -> dict[str, Any]:
    """A folder of two JSONL files: the first one's first record without ``text``, the second good."""
    (tmp / "data").mkdir()
    _file(tmp / "data" / "a.jsonl", '{"body": "y", "id": 1}\n{"text": "z"}\n')
    _file(tmp / "data" / "b.jsonl", '{"text": "x"}\n')
    return {"source": "jsonl", "path": str(tmp / "data")}


def test_a_first_record_without_the_field_of_its_format(tmp_path: Path, capsys) -> None:
    """The source's first record holds the field the recipe names, read without a tokenizer; the line names the file
    and field and what the record has, as a run stops with (``bad_rows: skip`` skips such records: not checked)."""
    data = _records_without_the_text_field(tmp_path)
    assert _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": data}) == (
        f"train.data.text_field: no field 'text' in {tmp_path / 'data' / 'a.jsonl'}:1 (fields: body, id)")
    chat = {"source": "jsonl", "path": _file(tmp_path / "chat.jsonl", '{"text": "x"}\n'), "format": "chat",
            "chat_template": _file(tmp_path / "t.jinja", "{{ messages }}")}
    assert _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": chat}) == (
        f"train.data.messages_field: no field 'messages' in {tmp_path / 'chat.jsonl'}:1 (fields: text)")
    skipped = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"],
                                                               "data": {**data, "bad_rows": "skip"}}))
    assert main(["validate", str(skipped)]) == 0


def test_a_first_line_that_does_not_parse(tmp_path: Path, capsys) -> None:
    """With ``bad_rows: error``, the line a run stops with at once; ``skip`` skips it as a run does (not checked), but
    a file that cannot be read stops either way."""
    data = {"source": "jsonl", "path": _file(tmp_path / "bad.jsonl", '{broken\n{"text": "x"}\n')}
    assert _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": data}) == (
        f"train.data.path: cannot read {tmp_path / 'bad.jsonl'}: line 1: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)")
    skipped = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"],
                                                               "data": {**data, "bad_rows": "skip"}}))
    assert main(["validate", str(skipped)]) == 0
    assert capsys.readouterr().out == f"{skipped}: ok\n"
    latin = {"source": "jsonl", "path": _file(tmp_path / "latin.jsonl", b'{"text": "\xe9"}\n'), "bad_rows": "skip"}
    assert _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": latin}).startswith(
        f"train.data.path: cannot read {tmp_path / 'latin.jsonl'}: 'utf-8' codec can't decode byte 0xe9")


@pytest.mark.parametrize(("format_", "name", "content", "problem"), [
    ("text", "d.jsonl", '{"text": 12345}', "text_field: 'text' holds int, not text"),
    ("tokens", "d.jsonl", '{"input_ids": "abc"}', "ids_field: 'input_ids' is not a list of token ids"),
    ("chat", "d.jsonl", '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
     "messages_field: unknown role 'robot' in message 0"),
    ("prompt_completion", "d.jsonl", '{"prompt": "p", "completion": ""}', "completion_field: empty 'completion'"),
    ("arena", "d.csv", 'id,prompt\n1,"[""hi""]"', "path: 'response_a' is not a list of turns")])
def test_a_first_record_its_document_could_not_read(format_: str, name: str, content: str, problem: str,
                                                    tmp_path: Path, capsys) -> None:
    """The first record is read as its format's document reads it before the tokenizer (each field's type, a chat's
    roles, an arena row's columns): the line a run stops with at once."""
    source: dict[str, Any] = {"source": name.split(".")[-1], "path": _file(tmp_path / name, content + "\n"),
                              "format": format_}
    if format_ in ("chat", "arena"):
        source["chat_template"] = _file(tmp_path / "t.jinja", "{{ messages }}")
    if format_ == "arena":
        source["truncate_tokens"] = 48
    line = _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": source})
    field, _, what = problem.partition(": ")
    assert line.startswith(f"train.data.{field}: {what}") and f"{tmp_path / name}:" in line, line


def test_train_refuses_that_record_before_its_tokenizer(tmp_path: Path, capsys, monkeypatch) -> None:
    import toolkit.training.session

    monkeypatch.setattr(toolkit.training.session, "load_tokenizer", lambda *args: pytest.fail("tokenizer loaded"))
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"],
                                                              "data": _records_without_the_text_field(tmp_path)},
                                         output={"dir": str(tmp_path / "run")}))
    assert main(["train", str(recipe)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: train.data.text_field: no field 'text' in {tmp_path / 'data' / 'a.jsonl'}:1 (fields: body, id)")
    assert not (tmp_path / "run").exists()


FOLDERS = {"jsonl": ("jsonl", '{"text": "x"}\n', '{"body": "y"}\n'),
           "json arrays": ("json", '[{"text": "x"}]', '[{"body": "y"}]'),
           "text": ("txt", "a book", "another book")}
"""A folder of two files of a format, the first good, the second's first record without ``text`` (text files'
records have nothing but ``text``)."""


@pytest.mark.parametrize("case", sorted(FOLDERS))
def test_only_a_folders_first_file_is_read(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """A text file or a JSON array is read whole, and a folder may hold a corpus of them: the first record is the first
    file's, and no other file is opened (a bad record further on stops the run when it is reached)."""
    import toolkit.data.local_files

    suffix, first, second = FOLDERS[case]
    folder = tmp_path / "data"
    folder.mkdir()
    _file(folder / f"a.{suffix}", first)
    _file(folder / f"b.{suffix}", second)
    opened: list[str] = []
    open_data, read_text = toolkit.data.local_files._open, Path.read_text

    def counted_open(file: str) -> Any:
        opened.append(file)
        return open_data(file)

    def counted_read_text(path: Path, *args: Any, **kwargs: Any) -> str:
        opened.append(str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(toolkit.data.local_files, "_open", counted_open)
    monkeypatch.setattr(Path, "read_text", counted_read_text)
    source = "text" if suffix == "txt" else "jsonl"
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"],
                                                              "data": {"source": source, "path": str(folder)}}))
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert [file for file in opened if file.startswith(str(folder))] == [str(folder / f"a.{suffix}")]


def test_every_stage_and_mixture_source_is_checked(tmp_path: Path, capsys) -> None:
    assert _validate(tmp_path, capsys, train=_with_stage_mixture(tmp_path)) == (
        f"train.stages[1].data.mixture[1].path: no such file: {tmp_path / 'gone.jsonl'}")


def test_a_missing_chat_template(tmp_path: Path, capsys) -> None:
    conversation = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    data = {"source": "jsonl", "path": _file(tmp_path / "chat.jsonl", conversation), "format": "chat",
            "chat_template": str(tmp_path / "nope.jinja")}
    assert _validate(tmp_path, capsys, train={**MICRO_RECIPE["train"], "data": data}) == (
        f"train.data.chat_template: no such file: {tmp_path / 'nope.jinja'}")


def test_a_missing_local_model_folder(tmp_path: Path, capsys) -> None:
    model = {**MICRO_RECIPE["model"], "init_config": None, "name_or_path": str(tmp_path / "no-model")}
    assert _validate(tmp_path, capsys, model=model) == (
        f"model.name_or_path: no such folder, and not a hub id: {tmp_path / 'no-model'}")


def test_a_model_folder_without_a_tokenizer(tmp_path: Path, capsys) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    model = {"name_or_path": str(tmp_path / "model"), "precision": "fp32"}
    assert _validate(tmp_path, capsys, model=model) == (
        f"model.tokenizer: cannot load '{tmp_path / 'model'}' (from model.name_or_path): no tokenizer in it (none of "
        "tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json)")


def test_an_output_dir_under_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("kept")
    assert _validate(tmp_path, capsys, output={"dir": str(tmp_path / "taken" / "run")}) == (
        f"output.dir: {tmp_path / 'taken'} is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "kept"


def _run_folder(run: Path, checkpoint: bool = True) -> Path:
    """A run folder as train leaves it: its recipe, and a complete checkpoint (or, finished, only ``final/``)."""
    (run / "final").mkdir(parents=True)
    dump_recipe(Recipe.model_validate(dict(MICRO_RECIPE, output={"dir": str(run)})), run / "recipe.resolved.yaml")
    if checkpoint:
        (run / "checkpoints" / "stage-1-step-000004").mkdir(parents=True)
        (run / "checkpoints" / "stage-1-step-000004" / "trainer_state.json").write_text(
            '{"stage": 1, "step": 4, "global_step": 10, "stage_done": true}')
    return run


def test_checkpoints_in_output_dir_are_a_note_on_the_ok_line(tmp_path: Path, capsys) -> None:
    """A finished run keeps its last checkpoints: validating its recipe is ok, with a note of the line train stops
    with unless train.resume is true, and of the checkpoint it resumes when it is; nothing is changed."""
    run = _run_folder(tmp_path / "run")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(run)}))
    before = sorted(tmp_path.rglob("*"))
    assert main(["validate", str(recipe)]) == 0
    assert capsys.readouterr().out == (
        f"{recipe}: ok\n{recipe}: note: train would refuse to start: {run} already holds checkpoints "
        "(stage-1-step-000004): set train.resume=true to continue that run, or output.dir=... for a new one\n")
    assert main(["validate", str(recipe), "--set", "train.resume=true"]) == 0
    assert capsys.readouterr().out == (f"{recipe}: ok\n{recipe}: note: train resumes from "
                                       f"{run / 'checkpoints' / 'stage-1-step-000004'} (train.resume: true)\n")
    assert sorted(tmp_path.rglob("*")) == before
    state = run / "checkpoints" / "stage-1-step-000004" / "trainer_state.json"
    state.write_text('{"stage": 1}')  # not where training stood: one line, as train gives it
    assert main(["validate", str(recipe), "--set", "train.resume=true"]) == 2
    assert capsys.readouterr().err == (f"error: {recipe}: {state}: no step, global_step (not a checkpoint's state); "
                                       "move that checkpoint away to resume from the one before\n")


def test_an_output_dir_train_refuses_whatever_the_resume(tmp_path: Path, capsys) -> None:
    """A finished run without checkpoints, and a folder of other files: train refuses them at once, so does
    validate, with the line train gives."""
    run = _run_folder(tmp_path / "run", checkpoint=False)
    assert _validate(tmp_path, capsys, output={"dir": str(run)}) == (
        f"output.dir: {run} holds a finished run (final/) and no checkpoint to resume; name a new folder, or move "
        "that run away")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.md").write_text("kept")
    assert _validate(tmp_path, capsys, output={"dir": str(tmp_path / "notes")}) == (
        f"output.dir: {tmp_path / 'notes'} holds files and is no run folder; name a new or empty folder")


def test_a_good_recipe_is_ok_and_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    """Local model, data and template all there: ok, and no output folder (nor any other file) made; a hub id is
    named on the ok line, not reached."""
    (tmp_path / "model").mkdir()
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "model" / name).write_text("{}")
    conversation = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    data = {"source": "jsonl", "path": _file(tmp_path / "chat.jsonl", conversation), "format": "chat",
            "chat_template": _file(tmp_path / "t.jinja", "{{ messages }}")}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model={"name_or_path": str(tmp_path / "model")},
                                         train={**MICRO_RECIPE["train"], "data": data},
                                         output={"dir": str(tmp_path / "out" / "run")}))
    hub = write_recipe(tmp_path, dict(MICRO_RECIPE, model={"name_or_path": "nobody/no-such-model"},
                                      output={"dir": str(tmp_path / "out" / "run")}), "hub.yaml")
    before = sorted(tmp_path.rglob("*"))
    assert main(["validate", str(recipe), str(hub)]) == 0
    assert capsys.readouterr().out == f"{recipe}: ok\n{hub}: ok (hub ids left to train: nobody/no-such-model)\n"
    assert sorted(tmp_path.rglob("*")) == before


def _jury_suite(tmp: Path, judge_model: str) -> str:
    """A jury suite (the shipped example's data) whose one judge is the local transformers model ``judge_model``."""
    suite = {"name": "panel", "tasks": [{"type": "jury", "name": "answers", "data": str(ROOT / "evals" /
                                                                                        "jury-example.jsonl"),
                                         "length": 256, "judges": [{"name": "local", "model": judge_model}]}]}
    return _file(tmp / "panel.yaml", yaml.safe_dump(suite))


def test_a_local_judge_folder_that_is_not_there(tmp_path: Path, capsys) -> None:
    suite = _jury_suite(tmp_path, str(tmp_path / "judge"))
    assert _validate(tmp_path, capsys, eval={"suites": [suite]}) == (
        f"{suite}: answers: judge local: model: no such folder, and not a hub id: {tmp_path / 'judge'}")


def test_a_judge_by_hub_id_is_named_not_reached(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [_jury_suite(tmp_path, "nobody/judge")]}))
    assert main(["validate", str(recipe)]) == 0
    assert capsys.readouterr().out == f"{recipe}: ok (hub ids left to train: nobody/judge)\n"
