"""User mistakes on every command: each exits 2 with one line naming the field or file at fault, before any model is
loaded or trained, and leaves no file behind (nor replaces one)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import ROOT, make_n, needle_suite
from tests.test_verdict import fake_run
from toolkit.cli import main

NO_PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (no files can be made there)")

ARENA_TEST = ROOT / "data" / "arena-example" / "test.csv"


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a command that exits 2 prints, without ``error: ``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").rstrip("\n")


def test_a_recipe_that_is_not_utf8_text(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\xff\xfename: x\n")
    assert _error(["validate", str(recipe)], capsys) == f"{recipe}: not UTF-8 text (byte 0: invalid start byte)"


def test_validate_checks_every_recipe_and_names_each_mistake(tmp_path: Path, capsys) -> None:
    """One line per recipe at fault, the recipes after it still checked; a corpus file not made yet says how to make
    it (a fresh clone before ``make corpus``)."""
    suite = tmp_path / "evals" / "heldout.yaml"
    suite.parent.mkdir()
    suite.write_text("name: heldout\ntasks:\n  - {type: perplexity, length: 64, bucket: 32, source: {source: text, "
                     "path: ../data/corpus/heldout.txt}}\n")
    good = write_recipe(tmp_path, MICRO_RECIPE, "good.yaml")
    corpus = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(suite)]}), "corpus.yaml")
    assert main(["validate", str(corpus), str(tmp_path / "gone.yaml"), str(good)]) == 2
    out, err = capsys.readouterr()
    assert out == f"{good}: ok\n"
    assert err.splitlines() == [
        f"error: {corpus}: {suite}: tasks[0].source.path: no such text file "
        f"{tmp_path / 'data' / 'corpus' / 'heldout.txt'} (`make corpus` writes it)",
        f"error: {tmp_path / 'gone.yaml'}: no such file"]


def test_a_misspelt_key_is_named_with_the_key_it_resembles(tmp_path: Path, capsys) -> None:
    """In a suite and in a recipe alike: a misspelt required key is the typo (it read as the key missing)."""
    suite = tmp_path / "typo.yaml"
    suite.write_text("name: typo\ntasks:\n  - type: niah\n    lenghts: [128]\n    depths: [0.5]\n")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(suite)]}))
    assert _error(["validate", str(recipe)], capsys) == (
        f"{recipe}: {suite}:4: tasks[0].lenghts: unknown key (did you mean lengths?)")
    good = write_recipe(tmp_path, MICRO_RECIPE, "good.yaml")
    assert _error(["validate", str(good), "--set", "train.stages[0].max_stpes=3"], capsys) == (
        f"{good}: override 'train.stages[0].max_stpes=3': train.stages[0].max_stpes: unknown key (did you mean "
        "max_steps?)")


def test_a_verdict_the_suites_cannot_give(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(needle_suite(tmp_path))]}))
    assert _error(["validate", str(recipe), "--set", "eval.verdict={task: needles/nope}"], capsys) == (
        f"{recipe}: eval.verdict.task: needles/nope is no niah task of eval.suites (theirs: needles/passkey)")
    assert _error(["validate", str(recipe), "--set", "eval.verdict={task: needles/passkey}"], capsys) == (
        f"{recipe}: eval.verdict.retention_suites[0]: no suite named short-context in eval.suites (names: needles)")
    assert main(["validate", str(recipe), "--set", "eval.verdict={task: needles/passkey, retention_suites: []}"]) == 0


def test_an_output_dir_under_a_file_stops_train_before_the_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("kept")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(tmp_path / "taken" / "run")}))
    assert _error(["train", str(recipe)], capsys) == f"output.dir: {tmp_path / 'taken'} is a file, not a folder"
    assert (tmp_path / "taken").read_text() == "kept"


def test_a_data_file_without_the_field_stops_train_before_the_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "docs.jsonl").write_text('{"body": "no text field"}\n' * 3)
    data = {"source": "jsonl", "path": str(tmp_path / "docs.jsonl")}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"], "data": data},
                                         output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys) == (
        f"train.data.text_field: no field 'text' in {tmp_path / 'docs.jsonl'}:1 (fields: body)")
    assert not (tmp_path / "run").exists()  # stopped before the model loaded: no run folder at all


def test_a_mistyped_local_model_folder_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``models/nope`` is shaped like a hub id, so only the hub (or its cache) was asked; ``models/`` is a folder
    here, which the line says."""
    from toolkit.model.loading import _load_failure

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    failed = OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")
    assert str(_load_failure("models/nope", "--model", failed)) == (
        "--model: cannot load 'models/nope': We couldn't connect to 'https://huggingface.co' to load the files. "
        "(models is a folder here, with no nope in it)")
    assert str(_load_failure("org/nope", "--model", failed)).endswith("load the files.")  # no folder org here
    listed = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a `tokenizers` library "
                        "serialization file, \n(2) a slow tokenizer instance to convert")
    assert str(_load_failure("/m", "--model", listed)) == (  # a first line that ends in a colon: all of it
        "--model: cannot load '/m': Couldn't instantiate the backend tokenizer from one of: (1) a `tokenizers` library "
        "serialization file, (2) a slow tokenizer instance to convert")


def test_an_empty_text_source_is_named_with_its_suite_and_task(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("  \n\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ntasks:\n  - {type: perplexity, length: 64, bucket: 32,\n"
                     "     source: {source: text, path: empty.txt}}\n")
    argv = ["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), "--out", str(tmp_path / "out")]
    assert _error(argv, capsys) == f"{suite}: tasks[0].source.path: {tmp_path / 'empty.txt'} holds no text"


@pytest.mark.parametrize(("args", "expected"), [
    (["--max-length", "0"], "--max-length: 0 is not a positive number of tokens"),
    (["--max-length", "32"], "--max-length 32: leaves out every prompt length of {suite}"),
    (["--out", "{tmp}/taken/out"], "--out: {tmp}/taken is a file, not a folder"),
    (["--out", "{tmp}/out"], "--out: {tmp}/out/needles.json is a folder; the results of suite needles are written "
                             "to that file"),
    (["--device", "bogus"], "--device: 'bogus' is not a device (cpu, cuda, cuda:1, ...)"),
    (["--device", "mps"], "--device: 'mps': the toolkit runs on cpu or cuda (ROCm's GPUs are cuda devices)"),
    (["--device", "meta"], "--device: 'meta': the toolkit runs on cpu or cuda (ROCm's GPUs are cuda devices)")])
def test_eval_refuses_before_loading_the_model(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    suite = needle_suite(tmp_path)
    (tmp_path / "taken").write_text("kept")
    args = [arg.format(tmp=tmp_path) for arg in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "elsewhere")]
    (tmp_path / "out" / "needles.json").mkdir(parents=True)  # where a suite's results would go: a folder
    # no such model: a check that came after loading it would fail on the model instead
    argv = ["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), *out, *args]
    assert _error(argv, capsys) == expected.format(tmp=tmp_path, suite=suite)
    assert not (tmp_path / "elsewhere").exists() and [p.name for p in (tmp_path / "out").iterdir()] == ["needles.json"]


@pytest.mark.parametrize(("task", "expected"), [
    ("{type: niah, lengths: [16, 64], depths: [0.0], samples: 1}",
     "niah task niah: length 16 is too short for its needles and question ("),
    ("{type: niah, lengths: [64], samples: 1, chat: true}",
     "niah task niah: chat: true, but the tokenizer has no chat template (ask without it for base models)"),
    ("{type: ruler, lengths: [40], tasks: [vt], samples: 1}",
     "ruler task vt: length 40 is too short for its needles, question and answer"),
    (f"{{type: preference, data: {ARENA_TEST}}}",
     "task preference: label_tokens: 'tie' is 2 tokens of the tokenizer, not one"),
    (f"{{type: preference, data: {ARENA_TEST}, label_tokens: [a, b, c], truncate_tokens: 5}}",
     f"task preference: truncate_tokens: 5 leaves no room for the comparison in {ARENA_TEST}:2 (the layout alone "
     "takes")])
def test_prompts_the_tokenizer_cannot_build_stop_eval_and_train_before_the_model(
        task: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Prompt lengths are counted in the model's tokens: what its tokenizer cannot build is known before the model
    loads (in a run, before training: a run without ``eval.before`` would meet it after the first stage)."""
    import toolkit.model.loading
    from tests.test_evals_fixtures import tiny_model, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    capsys.readouterr()
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: s\ntasks:\n  - {task}\n")
    monkeypatch.setattr(toolkit.model.loading, "load_merged", lambda *a, **k: pytest.fail("the model was loaded"))
    assert _error(["eval", "--model", str(folder), "--suite", str(suite), "--out", str(tmp_path / "out")],
                  capsys).startswith(expected)
    monkeypatch.setattr(toolkit.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(suite)], "before": False},
                                         output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys).startswith(expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_tokenizer_with_neither_pad_nor_eos_stops_eval_and_train_before_the_model(tmp_path: Path, capsys) -> None:
    """Both pad with eos where a tokenizer has no pad token (:func:`toolkit.data.tokenizer.pretrained_tokenizer`);
    without either, each names its own field (the evaluation set pad to None before, and went on)."""
    from tests.test_evals_fixtures import tiny_model, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    tokenizer = copy.deepcopy(tiny_tokenizer())  # the shared one keeps its specials
    tokenizer.pad_token = tokenizer.eos_token = None
    tokenizer.save_pretrained(folder)
    capsys.readouterr()
    argv = ["eval", "--model", str(folder), "--suite", str(needle_suite(tmp_path)), "--out", str(tmp_path / "out")]
    assert _error(argv, capsys) == f"--model: {str(folder)!r} has neither a pad nor an eos token"
    model = {"name_or_path": str(folder), "precision": "fp32"}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=model, output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys) == (
        f"model.tokenizer: {str(folder)!r} has neither a pad nor an eos token")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_weights_cut_short_and_an_adapter_of_another_model_are_one_line(tmp_path: Path, capsys) -> None:
    """A half-copied ``model.safetensors``, and an adapter trained on other shapes, name what cannot be loaded."""
    from peft import LoraConfig, get_peft_model

    from tests.test_evals_fixtures import tiny_model, tiny_tokenizer

    base, cut, adapter = tmp_path / "base", tmp_path / "cut", tmp_path / "adapter"
    for folder in (base, cut):
        tiny_model().save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    other = tiny_model()
    other.resize_token_embeddings(other.config.vocab_size + 64)  # another model's shapes
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["embed_tokens"])).save_pretrained(
        str(adapter))
    capsys.readouterr()
    suite = needle_suite(tmp_path)
    assert _error(["eval", "--model", str(cut), "--suite", str(suite), "--out", str(tmp_path / "o1")],
                  capsys).startswith(f"--model: cannot load {str(cut)!r}: ")
    argv = ["eval", "--model", str(base), "--adapter", str(adapter), "--suite", str(suite), "--out", str(tmp_path)]
    assert main(argv) == 2  # after the base's progress bar: the adapter is read onto the loaded base
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {adapter}: the adapter does not load onto {str(base)!r}: "), last


def test_a_lora_run_of_another_base_model_is_one_line_before_the_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A LoRA run's ``final/`` records the base it was trained on in its config.json: one of another width than
    ``--model`` is one line naming both, before any weights load (transformers printed its size-mismatch report, then
    a traceback)."""
    from transformers import LlamaForCausalLM

    import toolkit.model.loading
    from tests.micro_models import micro_config
    from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
    from toolkit.model.lora import apply_lora
    from toolkit.model.saving import save_final
    from toolkit.recipe.schema import LoraSpec, MethodSpec

    base, run_b, wider_base = tmp_path / "run-a" / "final", tmp_path / "run-b" / "final", tmp_path / "wider"
    tiny_model().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    wider = LlamaForCausalLM(micro_config(hidden_size=96, intermediate_size=192, vocab_size=len(tiny_tokenizer())))
    wider.config.save_pretrained(wider_base)  # which peft reads on saving (a hub id: looked up on the network)
    wider.name_or_path = str(wider_base)  # as loading from there sets it, and peft records it in adapter_config.json
    method = MethodSpec(kind="lora", lora=LoraSpec(r=2, target_modules=["q_proj"]))
    save_final(apply_lora(wider, method.lora), tiny_tokenizer(), run_b, method)
    monkeypatch.setattr(toolkit.model.loading, "_pretrained", lambda *a, **k: pytest.fail("the weights were loaded"))
    capsys.readouterr()
    argv = ["eval", "--model", str(base), "--adapter", str(run_b), "--suite", str(needle_suite(tmp_path)), "--out",
            str(tmp_path / "out")]
    assert _error(argv, capsys) == (
        f"{run_b}: the adapter was trained on a different base model (base_model_name_or_path {str(wider_base)!r}) "
        f"than --model {str(base)!r}: its config.json has hidden_size 96, intermediate_size 192, head_dim 24; "
        f"{str(base)!r} has hidden_size 64, intermediate_size 128, head_dim 16")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("out", "expected"), [
    ("notes.txt", "--out: {tmp}/notes.txt is a file; name a folder for the merged model"),
    ("other-run", "--out: {tmp}/other-run holds files and is no earlier merge (no merged_from.json); the merge "
                  "replaces the folder, so name a new one"),
    ("run/final", "--out: {tmp}/run/final holds files and is no earlier merge (no merged_from.json); the merge "
                  "replaces the folder, so name a new one"),
    ("base-model", "--out: {tmp}/base-model holds files and is no earlier merge (no merged_from.json); the merge "
                   "replaces the folder, so name a new one"),
    ("full-run/final", "--out: {tmp}/full-run/final is a run's final model; name a new folder for the merged model")])
def test_merge_never_replaces_what_it_did_not_make(out: str, expected: str, tmp_path: Path, capsys) -> None:
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")  # refused before it is read: no model is loaded
    (final / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "other-run").mkdir()
    (tmp_path / "other-run" / "metrics.jsonl").write_text("kept")
    (tmp_path / "full-run" / "final").mkdir(parents=True)  # a full fine-tune: weights like an earlier merge
    (tmp_path / "full-run" / "final" / "config.json").write_text("kept")
    (tmp_path / "full-run" / "recipe.resolved.yaml").write_text("name: full-run\n")
    (tmp_path / "base-model").mkdir()  # a model folder: weights like an earlier merge, the adapter's own base
    (tmp_path / "base-model" / "config.json").write_text("kept")
    assert _error(["merge", str(tmp_path / "run"), "--out", str(tmp_path / out)], capsys) == expected.format(
        tmp=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == (tmp_path / "other-run" / "metrics.jsonl").read_text() == "kept"
    assert (tmp_path / "full-run" / "final" / "config.json").read_text() == "kept"
    assert (tmp_path / "base-model" / "config.json").read_text() == "kept"
    assert sorted(os.listdir(final)) == ["adapter_config.json", "config.json"]


@NO_PROC
def test_predict_refuses_an_out_it_cannot_write_before_predicting(tmp_path: Path, capsys) -> None:
    assert _error(["predict", str(tmp_path), "--data", "x.csv", "--out", "/proc/submission.csv"], capsys) == (
        "--out: cannot write in /proc (No such file or directory)")


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.md").write_text("kept")
    assert _error(["report", str(tmp_path)], capsys) == (
        f"{tmp_path}: not a run folder (it holds files, but no recipe.resolved.yaml, run_info.json or eval/)")
    assert os.listdir(tmp_path) == ["notes.md"]


@pytest.mark.parametrize("flags", [[], ["--check"], ["--summary"]], ids=["report", "check", "summary"])
def test_report_refuses_an_empty_folder_and_writes_nothing(flags: list[str], tmp_path: Path, capsys) -> None:
    """An empty folder is no run (training writes its recipe first): no report is written into it, so train can
    still take it as output.dir."""
    assert _error(["report", *flags, str(tmp_path)], capsys) == (
        f"{tmp_path}: not a run folder (it is empty: no recipe.resolved.yaml, run_info.json or eval/)")
    assert os.listdir(tmp_path) == []


def test_report_summary_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    run = fake_run(tmp_path, "run", verdict={"task": "niah-tiny/passkey"})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.md").write_text("kept")
    assert _error(["report", "--summary", str(run), str(tmp_path / "notes")], capsys) == (
        f"{tmp_path / 'notes'}: not a run folder (it holds files, but no recipe.resolved.yaml, run_info.json or eval/)")
    assert os.listdir(tmp_path / "notes") == ["notes.md"]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("metrics.jsonl", '{"global_step": 1, "loss": 2.0}\n{"global_step": 2, loss}\n{"glo',
     "{path}:2: not valid JSON (Expecting property name enclosed in double quotes)"),
    ("recipe.resolved.yaml", "name: x\ntrain: {stages: [\n",
     "{path}:3: YAML syntax error: expected the node content, but found '<stream end>'"),
    ("recipe.resolved.yaml", "name: x\nmodel: {init_config: {}, train_tokenizer: {}}\ntrain: [1]\n",
     "{path}:3: train: Input should be a valid dictionary or instance of TrainSpec"),
    ("run_info.json", '{"stages": 5}', "{path}: stages: Input should be a valid list")],
    ids=["metrics-line", "recipe-yaml", "recipe-schema", "run-info"])
def test_report_names_a_corrupt_file_of_the_run(name: str, text: str, expected: str, tmp_path: Path, capsys) -> None:
    run = fake_run(tmp_path, "run", verdict={"task": "niah-tiny/passkey"})
    (run / name).write_text(text)
    assert _error(["report", str(run)], capsys) == expected.format(path=run / name)
    assert not (run / "report.md").exists()


def _edited_results(run: Path, tag: str, suite: str, edit) -> Path:
    path = run / "eval" / tag / f"{suite}.json"
    data = json.loads(path.read_text())
    edit(data["tasks"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("check", [False, True], ids=["report", "report-check"])
@pytest.mark.parametrize(("file", "edit", "expected"), [
    ("metrics.jsonl", lambda row: row.pop("global_step"), "{path}:2: global_step: Field required"),
    ("metrics.jsonl", lambda row: row.update(loss="high"), "{path}:2: loss: Input should be a valid number"),
    ("metrics.jsonl", lambda row: row.update(source_tokens=[1]), "{path}:2: source_tokens: Input should be a valid "
     "dictionary"),
    ("niah-tiny", lambda tasks: tasks["passkey"].pop("type"), "{path}: tasks.passkey.type: Field required"),
    ("niah-tiny", lambda tasks: tasks["passkey"]["correct_by_length"].update({"256": "x"}),
     "{path}: tasks.passkey.correct_by_length.256: Input should be a valid integer"),
    ("short-context", lambda tasks: tasks.update(passkey_short=[0.9]),
     "{path}: tasks.passkey_short: Input should be a valid dictionary")],
    ids=["metrics-no-global-step", "metrics-loss-text", "metrics-source-tokens-list", "results-no-type",
         "results-count-text", "results-entry-list"])
def test_report_names_a_hand_edited_field_of_the_run(file: str, edit, expected: str, check: bool, tmp_path: Path,
                                                      capsys) -> None:
    """Valid JSON without the fields the report and the verdict read (a traceback before): one line naming the file
    (and line) and the field, nothing written."""
    run = fake_run(tmp_path, "run", verdict={"task": "niah-tiny/passkey"})
    if file == "metrics.jsonl":
        rows = [{"stage": 0, "stage_name": "passkey-256", "step": step, "global_step": step, "loss": 2.0,
                 "source_tokens": {"synthetic": 64 * step}} for step in (1, 2)]
        edit(rows[1])
        path = run / file
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path = _edited_results(run, "base", file, edit)
    argv = ["report", *(["--check"] if check else []), str(run)]
    assert _error(argv, capsys) == expected.format(path=path)
    assert not (run / "report.md").exists()


_FINISHED: dict[str, dict[str, Any]] = {
    # a finished entry of each type, short of what its case below finds missing: the field it drops, or jury's and
    # jury_pairwise's panel and preference's truncate_tokens
    "ruler": {"type": "ruler", "score": 0.5, "complete": True, "effective_length": 128,
              "scores_by_length": {"128": 0.9, "256": 0.1}},
    "perplexity": {"type": "perplexity", "score": None, "complete": True, "loss_by_bucket": {"0": 3.0},
                   "mean_loss": 3.0, "perplexity": 20.1},
    "rope_compare": {"type": "rope_compare", "score": None, "complete": True, "best": "yarn", "settings": {
        "yarn": {"score": 0.5, "scores_by_length": {"256": 0.5}, "rope_parameters": {"rope_type": "yarn"}}}},
    "jury": {"type": "jury", "score": 0.5, "complete": True, "pooling": "max_vote", "items": 2, "n": 2, "correct": 1,
             "judges": {}},
    "jury_pairwise": {"type": "jury_pairwise", "score": 0.5, "complete": True, "n": 2, "correct": 1, "judges": {}},
    "preference": {"type": "preference", "score": 0.5, "complete": True, "n": 2, "correct": 1, "log_loss": 1.0,
                   "swap_consistency": 0.1, "inputs": 4, "truncated_inputs": 0, "tokens_cut": 0},
}


def _added(key: str, kind: str, **change):
    """An edit adding a ``kind`` entry under ``key``, with ``change`` applied (``None``: the field removed)."""
    entry = {**copy.deepcopy(_FINISHED[kind]), **change}
    return lambda tasks: tasks.update({key: {k: v for k, v in entry.items() if v is not None}})


@pytest.mark.parametrize("check", [False, True], ids=["report", "report-check"])
@pytest.mark.parametrize(("suite", "edit", "expected"), [
    ("niah-tiny", lambda tasks: tasks["passkey"].pop("grid"), "tasks.passkey.grid: Field required"),
    ("niah-tiny", lambda tasks: tasks["passkey"].update(mean="high"), "tasks.passkey.mean: Input should be a valid "
     "number"),
    ("niah-tiny", lambda tasks: tasks["passkey"]["grid"].update({"256": {"0.5": "x"}}),
     'tasks.passkey.grid.256["0.5"]: Input should be a valid number'),
    ("short-context", lambda tasks: tasks["passkey_short"].pop("metrics"), "tasks.passkey_short.metrics: Field "
     "required"),
    ("niah-tiny", _added("ruler-4k", "ruler", scores_by_length=None), "tasks.ruler-4k.scores_by_length: Field "
     "required"),
    ("niah-tiny", _added("loss", "perplexity", loss_by_bucket=None), "tasks.loss.loss_by_bucket: Field required"),
    ("niah-tiny", _added("rope", "rope_compare", settings=None), "tasks.rope.settings: Field required"),
    ("niah-tiny", _added("rope", "rope_compare", settings={"yarn": {"score": 0.5, "scores_by_length": {}}}),
     "tasks.rope.settings.yarn.rope_parameters: Field required"),
    ("niah-tiny", _added("qa", "jury"), "tasks.qa.panel: Field required"),
    ("niah-tiny", _added("arena", "jury_pairwise"), "tasks.arena.panel: Field required"),
    ("niah-tiny", _added("arena", "preference"), "tasks.arena.truncate_tokens: Field required"),
    ("niah-tiny", _added("arena", "preference", truncate_tokens=1024, prior_log_loss="x"),
     "tasks.arena.prior_log_loss: Input should be a valid number"),
    ("niah-tiny", _added("loss", "perplexity", complete=False, loss_by_bucket=[3.0]),
     "tasks.loss.loss_by_bucket: Input should be a valid dictionary")],
    ids=["niah", "niah-mean-text", "niah-depth-text", "lm_eval", "ruler", "perplexity", "rope_compare",
         "rope_compare-setting", "jury", "jury_pairwise", "preference", "preference-prior-text",
         "cut-short-field-of-wrong-type"])
def test_report_names_a_missing_field_of_a_task_type(suite: str, edit, expected: str, check: bool, tmp_path: Path,
                                                     capsys) -> None:
    """The fields one task type's readers take from its entries (its ``TaskType.entry``), missing or of the wrong
    type: one line naming the file, task and field (a traceback in its report section before), nothing written."""
    run = fake_run(tmp_path, "run", verdict={"task": "niah-tiny/passkey"})
    path = _edited_results(run, "base", suite, edit)
    argv = ["report", *(["--check"] if check else []), str(run)]
    assert _error(argv, capsys) == f"{path}: {expected}"
    assert not (run / "report.md").exists()


def test_report_takes_entries_cut_short_and_of_unknown_types(tmp_path: Path, capsys) -> None:
    """An entry of an evaluation cut short holds only the shared fields and its cells; one of a type nobody
    registered keeps its score in the table: both are reported, as before."""
    run = fake_run(tmp_path, "run", verdict={"task": "niah-tiny/passkey"})
    cut_short: dict[str, dict[str, Any]] = {kind: {"type": kind, "score": None, "complete": False, "cells": []}
                                            for kind in _FINISHED}
    _edited_results(run, "stage-1-yarn-1024", "niah-tiny", lambda tasks: tasks.update(
        cut_short, lm_eval={"type": "lm_eval", "score": None, "complete": False},
        mystery={"type": "mystery", "score": 0.5, "complete": True}))
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "| niah-tiny / mystery | - | - | 0.500 |" in report


@pytest.mark.parametrize("command", ["report", "push", "merge"])
def test_a_run_folder_that_cannot_be_written_stops_before_any_work(command: str, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    """Each writes into the run (the report and its plots; the upload's staging; final/merged): as a user without
    write access it was a PermissionError traceback, after the merge for push --what merged and merge."""
    import tempfile

    from tests.hub_runs import write_run

    run = write_run(tmp_path, "lora")
    capsys.readouterr()
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    real = tempfile.TemporaryFile

    def no_writing_in_the_run(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own keyword)
        if dir is not None and Path(dir).is_relative_to(run):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", no_writing_in_the_run)
    argv = {"report": ["report", str(run)], "push": ["push", str(run), "--repo-id", "me/x", "--dry-run"],
            "merge": ["merge", str(run)]}[command]
    assert _error(argv, capsys).startswith(f"RUN: cannot write in {run}")
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before


@pytest.mark.parametrize("command", [["push", "--repo-id", "me/x", "--dry-run"], ["merge"], ["predict", "--data",
                                     str(ARENA_TEST), "--out", "submission.csv"]], ids=["push", "merge", "predict"])
def test_a_runs_final_model_given_as_the_run_names_its_run_folder(command: list[str], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text("name: x\n")
    (run / "final" / "config.json").write_text("{}")
    assert _error([command[0], str(run / "final"), *command[1:]], capsys) == (
        f"{run / 'final'}: not a run folder (it holds files, but no recipe.resolved.yaml, run_info.json or eval/); "
        f"name its run folder, {run}")


def test_summary_refuses_runs_of_different_verdicts(tmp_path: Path, capsys) -> None:
    fake_run(tmp_path, "a", verdict={"task": "niah-tiny/passkey"})
    fake_run(tmp_path, "b", verdict={"task": "niah-tiny/passkey", "extended_min": 0.5})
    assert _error(["report", "--summary", str(tmp_path / "a"), str(tmp_path / "b")], capsys) == (
        f"--summary: eval.verdict.extended_min is 0.5 in {tmp_path / 'b'} but 0.9 in {tmp_path / 'a'}; one table "
        "takes runs of one verdict")


def test_export_check_refuses_before_converting(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert _error(["export", str(model), "--format", "gguf", "--check"], capsys) == (
        f"export --check: {model} has no evaluations to compare with (a run folder is needed)")
    assert os.listdir(tmp_path) == ["model"]


@pytest.mark.parametrize(("flag", "value"), [("--gpu-memory", "nan"), ("--host-memory", "inf")])
def test_plan_refuses_memory_that_is_no_number(flag: str, value: str, capsys) -> None:
    assert _error(["plan", str(ROOT / "recipes" / "tiny-passkey.yaml"), flag, value], capsys) == (
        f"{flag}: must be positive GiB, got {value}")


@pytest.mark.parametrize(("gpus", "advised"), [([], 8), (["--gpus", "12"], 16)], ids=["default", "12"])
def test_plan_refuses_gpus_the_sequence_degree_does_not_divide(gpus: list[str], advised: int, capsys) -> None:
    """The launch would be refused whatever the memory, so no table and no verdict: the recipe and --gpus disagree."""
    argv = ["plan", str(ROOT / "recipes" / "llama3-8b-prolong-512k.yaml"), *gpus, "--gpu-memory", "141"]
    assert main(argv) == 2
    assert capsys.readouterr() == ("", (
        f"error: parallel.degree: 8 does not divide --gpus {gpus[-1] if gpus else 1}, so the launch would be refused; "
        f"plan for a multiple of 8 GPUs (--gpus {advised})\n"))


@pytest.mark.parametrize("command", ["train", "plan"])
def test_a_command_without_its_recipe_asks_for_the_recipe_alone(command: str, capsys) -> None:
    """Overrides are optional: only the recipe is named as missing (argparse exits 2 itself)."""
    with pytest.raises(SystemExit) as stopped:
        main([command])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"error: python -m toolkit {command}: the following arguments are required: "
                                       f"recipe (options: python -m toolkit {command} --help)\n")


def test_overrides_may_follow_the_options_and_anything_else_unknown_is_refused(capsys) -> None:
    recipe = str(ROOT / "recipes" / "tiny-passkey.yaml")
    assert main(["plan", recipe, "--gpus", "1", "--host-memory", "64", "train.stages[0].seq_len=128"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("seq_len x batch"))
    assert row.split()[3:6] == ["128", "x", "64"]  # the override, given after --gpus, took effect
    for argv in (["plan", recipe, "--gpus", "1", "--bogus"], ["eval", "--model", "m", "--suite", "s", "k=1"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert capsys.readouterr().err.startswith("error: python -m toolkit: unrecognized arguments: ")


def test_overrides_are_taken_as_set_options_too_and_validate_says_how_it_takes_them(capsys) -> None:
    recipe = str(ROOT / "recipes" / "tiny-passkey.yaml")
    assert main(["plan", recipe, "--host-memory", "64", "--set", "train.stages[0].seq_len=128",
                 "--set", "train.stages[0].batch_size=2",
                 "--set", "train.stages[0].batch_size=3"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("seq_len x batch"))
    assert row.split()[3:6] == ["128", "x", "3"]  # each took effect, the last of a key given twice
    with pytest.raises(SystemExit) as stopped:  # both forms at once: which came last is not kept
        main(["plan", recipe, "--set", "train.max_steps=2", "train.max_steps=3"])
    assert stopped.value.code == 2
    assert "overrides either as KEY=VALUE after the recipe or each after --set, not both" in capsys.readouterr().err
    assert _error(["validate", recipe, "train.max_steps=5"], capsys) == (
        "train.max_steps=5: no such file (an override? validate takes it as --set train.max_steps=5)")


def test_lora_settings_in_a_full_fine_tune_are_refused_but_a_run_that_had_them_reads_back(tmp_path: Path,
                                                                                          capsys) -> None:
    from toolkit.errors import UserError
    from toolkit.recipe.loading import check_recipe, dump_recipe, load_recipe
    from toolkit.run_folder import RECIPE, read_recipe

    recipe = str(ROOT / "recipes" / "tiny-passkey.yaml")
    assert _error(["validate", recipe, "--set", "method.lora.r=8"], capsys) == (
        f"{recipe}: method.lora: LoRA settings, but method.kind is full (set method.kind: lora, or drop them)")
    assert _error(["validate", recipe, "--set", "method.merge_on_save=true"], capsys) == (
        f"{recipe}: method.merge_on_save: merges a LoRA adapter, but method.kind is full")
    ran = load_recipe(recipe)  # a run made before the check, its LoRA settings recorded
    ran.method.lora.r, ran.method.merge_on_save = 8, True
    with pytest.raises(UserError, match=r"^recipe: method.lora: LoRA settings, but method.kind is full"):
        check_recipe(ran)  # set in Python, then run or planned: checked as a recipe file is
    dump_recipe(ran, tmp_path / RECIPE)
    read = read_recipe(tmp_path)
    assert read is not None and read.method.lora.r == 8


def test_a_home_folder_written_as_tilde_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a shell leaves unexpanded (``--out=~/x``, a ``~`` in a recipe) is the user's home, not a folder named
    ``~``."""
    from toolkit.errors import output_folder, user_path
    from toolkit.recipe.loading import load_recipe

    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_path("~/results") == str(tmp_path / "results") and output_folder("~/out") == tmp_path / "out"
    assert user_path("~nobody-here/x") == "~nobody-here/x"  # an unknown user's: left as written, no error
    (tmp_path / "data.jsonl").write_text('{"text": "a"}\n')
    recipe = load_recipe(ROOT / "recipes" / "tiny-passkey.yaml",
                         ["output.dir=~/run", "train.data={source: jsonl, path: ~/data.jsonl}"])
    assert recipe.run_dir == tmp_path / "run" and recipe.train.data.path == str(tmp_path / "data.jsonl")


@pytest.mark.parametrize(("command", "broken"), [
    ("plan", "config.json"), ("export", "tokenizer.json"), ("eval", "adapter_config.json")])
def test_a_model_folder_with_broken_json_names_the_file(command: str, broken: str, tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / broken).write_text('{"hidden_size": 64,\n"num_hidden_layers": }')
    argv = {"plan": ["plan", str(write_recipe(tmp_path, dict(MICRO_RECIPE, model={"name_or_path": str(model)})))],
            "export": ["export", str(model), "--format", "gguf"],
            "eval": ["eval", "--model", str(model), "--suite", str(needle_suite(tmp_path)), "--out",
                     str(tmp_path / "out")]}[command]
    assert _error(argv, capsys) == f"{model / broken}:2: not valid JSON (Expecting value)"


@pytest.mark.parametrize("command", ["train", "plan", "eval"])
def test_a_model_config_with_a_field_of_the_wrong_type_is_one_line(command: str, tmp_path: Path, capsys) -> None:
    from transformers import LlamaConfig

    from toolkit.data.tokenizer import train_tokenizer
    from toolkit.recipe.schema import TokenizerTraining

    model = tmp_path / "model"
    train_tokenizer(TokenizerTraining(vocab_size=320, corpus_documents=200), seed=0).save_pretrained(model)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4).to_dict()
    (model / "config.json").write_text(json.dumps({**config, "hidden_size": "big"}))
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model={"name_or_path": str(model), "precision": "fp32"},
                                         output={"dir": str(tmp_path / "run")}))
    argv = {"train": ["train", str(recipe)], "plan": ["plan", str(recipe)],
            "eval": ["eval", "--model", str(model), "--suite", str(needle_suite(tmp_path)), "--out",
                     str(tmp_path / "out")]}[command]
    transformers = ("Validation error for field 'hidden_size': TypeError: Field 'hidden_size' expected int, got str "
                    "(value: 'big')")
    plan = f"{model / 'config.json'}: hidden_size: 'big' is not an integer"  # the plan reads the sizes alone
    assert _error(argv, capsys).endswith(plan if command == "plan" else transformers)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_plan_of_a_model_that_is_no_llama_names_the_sizes_it_lacks(tmp_path: Path, capsys) -> None:
    """Its LlamaConfig defaults stood in for them: a 7B plan for a GPT-2 folder."""
    from toolkit.data.tokenizer import train_tokenizer
    from toolkit.recipe.schema import TokenizerTraining

    model = tmp_path / "model"
    train_tokenizer(TokenizerTraining(vocab_size=320, corpus_documents=200), seed=0).save_pretrained(model)
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "vocab_size": 320}))
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model={"name_or_path": str(model), "precision": "fp32"}))
    assert _error(["plan", str(recipe)], capsys).endswith(
        f"{model / 'config.json'}: no hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: plan "
        "reads a Llama-architecture model's sizes (this one is gpt2)")


@pytest.mark.parametrize(("change", "expected"), [
    ({"hidden_size": "abc"}, "model.init_config.hidden_size: Input should be a valid integer, unable to parse string "
                             "as an integer"),
    ({"num_hidden_layers": -4}, "model.init_config.num_hidden_layers: Input should be greater than 0"),
    ({"tie_word_embeddings": "maybe"}, "model.init_config.tie_word_embeddings: Input should be a valid boolean, "
                                       "unable to interpret input"),
    ({"hiden_size": 64}, "model.init_config.hiden_size: unknown key (did you mean hidden_size?)"),
    ({"num_key_value_heads": 3}, "model.init_config.num_key_value_heads: 3 does not divide num_attention_heads 4 "
                                 "(grouped-query attention shares each K/V head among a whole group)"),
    ({"hidden_size": 66}, "model.init_config.hidden_size: 66 is not a multiple of num_attention_heads 4")])
def test_init_config_sizes_are_checked_with_the_recipe(change: dict, expected: str, tmp_path: Path, capsys) -> None:
    """``validate`` finds them (they were tracebacks in train and plan, errors at the first step, or an unknown key
    that only building the model refused)."""
    model = {**MICRO_RECIPE["model"], "init_config": {**MICRO_RECIPE["model"]["init_config"], **change}}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=model))
    assert _error(["validate", str(recipe)], capsys).endswith(f": {expected}")


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_a_logging_backend_not_installed_stops_train_before_the_model(backend: str, tmp_path: Path, capsys,
                                                                       monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, logging={"backend": backend},
                                         output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys) == (
        f"logging.backend: {backend} is not installed (pip install '.[{backend}]')")
    assert not (tmp_path / "run").exists()


def test_a_stage_name_that_is_no_file_name_is_refused(tmp_path: Path, capsys) -> None:
    """A stage's name names its evaluation folder: ``../x`` wrote outside ``eval/``."""
    stages = [dict(MICRO_RECIPE["train"]["stages"][0], name="../x")]
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"], "stages": stages}))
    assert _error(["validate", str(recipe)], capsys).endswith(
        ": train.stages[0].name: String should match pattern '^[^./\\\\][^/\\\\]*$'")


@pytest.mark.parametrize(("change", "expected"), [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 2.0, "low_freq_factor": 1.0}},
     "Missing required keys in `rope_parameters` for 'rope_type'='llama3': {'high_freq_factor'}")])
def test_what_llamaconfig_refuses_in_init_config_is_one_line_before_training(change: dict, expected: str,
                                                                             tmp_path: Path, capsys) -> None:
    model = {**MICRO_RECIPE["model"], "init_config": {**MICRO_RECIPE["model"]["init_config"], **change}}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=model, output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys) == f"model.init_config: {expected}"
    assert main(["plan", str(recipe), "--host-memory", "64"]) == 0  # the plan reads the sizes alone
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["small-model", "corpus"])
def test_fetch_refuses_an_out_under_a_file(command: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("kept")
    assert _error([command, "--out", str(tmp_path / "taken" / "x")], capsys) == (
        f"--out: {tmp_path / 'taken'} is a file, not a folder")


def test_make_export_without_run_says_how_before_fetching_anything(tmp_path: Path) -> None:
    done = make_n("export", f"LLAMA_CPP_DIR={tmp_path / 'none'}")
    assert "pip download" not in done.stdout and "usage: make export RUN=" in done.stdout


@pytest.mark.parametrize("mistake", ["train.max_steps=5", "RECIPIE=recipes/smollm2-135m-yarn-32k-lora.yaml"])
def test_make_refuses_a_variable_it_does_not_read(mistake: str) -> None:
    """make ignores a command-line variable no rule reads: the default recipe would have trained in full."""
    done = make_n("train", mistake)
    assert done.returncode == 2 and not done.stdout
    assert f"*** {mistake.split('=')[0]}: no such variable here (recipe overrides go in ARGS=" in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("target", ["gpu-check", "gpu-demo"])
def test_make_names_a_device_the_gpu_scripts_do_not_run_on_before_installing_anything(target: str) -> None:
    done = make_n(target, "DEVICE=CPU")
    assert done.returncode == 2 and not done.stdout
    assert "*** DEVICE=CPU: gpu-check and gpu-demo run on cuda (the default) or cpu.  Stop." in done.stderr


def test_make_check_of_a_recipe_asks_for_its_run() -> None:
    """``make check`` read the default run whatever RECIPE said: another run's verdict."""
    done = make_n("check", "RECIPE=recipes/smollm2-135m-yarn-32k-lora.yaml")
    assert done.returncode == 2 and not done.stdout
    assert "*** RECIPE=recipes/smollm2-135m-yarn-32k-lora.yaml: check reads a run, not a recipe; name it with " \
           "RUN=runs/NAME.  Stop." in done.stderr


def test_make_validate_checks_the_recipe_it_is_given() -> None:
    def command(*args: str) -> list[str]:
        done = make_n("validate", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.replace("\\\n", " ").splitlines()[-1].split()

    given = command("RECIPE=mine.yaml", "ARGS=seed=1 train.max_steps=5")
    assert given[-5:] == ["mine.yaml", "--set", "seed=1", "--set", "train.max_steps=5"]  # validate's form
    assert command()[-1] == "recipes/*.yaml"


def test_a_hub_dataset_out_of_reach_stops_train_before_the_model(tmp_path: Path, capsys, monkeypatch) -> None:
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine without the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data = {"source": "hub", "path": "nobody/no-such-dataset"}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"], "data": data},
                                         output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys).startswith(
        "train.data.path: cannot open hub dataset 'nobody/no-such-dataset': ")
    assert not (tmp_path / "run").exists()  # stopped before the model loaded: no run folder at all


@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_haystack_dataset_out_of_reach_stops_before_the_model(command: str, tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine without the network
    suite = tmp_path / "hay.yaml"
    suite.write_text("name: hay\ntasks:\n  - {type: niah, lengths: [48], samples: 2, "
                     "haystack: {source: dataset, path: nobody/no-such-dataset}}\n")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(suite)]},
                                         output={"dir": str(tmp_path / "run")}))
    argv = (["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), "--out", str(tmp_path / "out")]
            if command == "eval" else ["train", str(recipe)])
    assert _error(argv, capsys).startswith("haystack dataset nobody/no-such-dataset (split train) could not be read")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_an_lm_eval_task_lm_eval_does_not_know_stops_eval_before_the_model(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "lm.yaml"
    suite.write_text(f"name: lm\ntasks:\n  - {{type: lm_eval, tasks: [longctx_passkey_shorts], "
                     f"include_path: {ROOT / 'evals' / 'lm_eval_tasks'}}}\n")
    argv = ["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), "--out", str(tmp_path / "out")]
    assert _error(argv, capsys) == f"{suite}: tasks[0].tasks: unknown lm-eval task(s) longctx_passkey_shorts"
    assert not (tmp_path / "out").exists()


def test_an_lm_eval_dataset_out_of_reach_stops_eval_before_the_model(tmp_path: Path, capsys, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # hellaswag not in the cache, as on a fresh machine
    suite = tmp_path / "lm.yaml"
    suite.write_text("name: lm\ntasks:\n  - {type: lm_eval, tasks: [hellaswag]}\n")
    argv = ["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), "--out", str(tmp_path / "out")]
    assert _error(argv, capsys) == (f"{suite}: tasks[0].tasks: dataset 'Rowan/hellaswag' of lm-eval task hellaswag "
                                    "cannot be opened: Couldn't reach 'Rowan/hellaswag' on the Hub "
                                    "(OfflineModeIsEnabled)")
    assert not (tmp_path / "out").exists()


def test_a_folder_named_as_a_yaml_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "recipes").mkdir()
    assert _error(["validate", str(tmp_path / "recipes")], capsys) == (
        f"{tmp_path / 'recipes'}: is a folder, not a YAML file")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(tmp_path / "recipes")]}))
    assert _error(["validate", str(recipe)], capsys) == (
        f"{recipe}: eval.suites[0]: {tmp_path / 'recipes'} is a folder, not a suite YAML file")


def test_suites_of_one_name_would_overwrite_each_others_results(tmp_path: Path, capsys) -> None:
    suite = needle_suite(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text("name: needles\ntasks:\n  - {type: niah, lengths: [48], samples: 2}\n")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(suite), str(other)]}))
    assert _error(["validate", str(recipe)], capsys) == (
        f"{recipe}: eval.suites[1]: {other} is named needles like {suite}; results are written per suite "
        "name, so names must differ")
    argv = ["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), "--suite", str(suite), "--out",
            str(tmp_path / "out")]
    assert _error(argv, capsys) == (f"--suite: {suite} is named needles like {suite}; results are written per "
                                    "suite name, so names must differ")
    assert not (tmp_path / "out").exists()


def test_eval_of_a_run_folder_points_at_its_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("kept")
    argv = ["eval", "--suite", str(needle_suite(tmp_path)), "--out", str(tmp_path / "out"), "--model"]
    assert _error([*argv, str(tmp_path / "run")], capsys) == (
        f"--model: {tmp_path / 'run'} is no model folder: it holds no config.json (a run folder? its model is "
        f"{tmp_path / 'run' / 'final'})")
    assert _error([*argv, str(tmp_path / "notes.txt")], capsys) == (
        f"--model: {tmp_path / 'notes.txt'} is a file; name a model folder (with config.json) or a hub id")
    assert not (tmp_path / "out").exists()


def test_train_never_writes_over_a_finished_run_or_among_other_files(tmp_path: Path, capsys) -> None:
    run = fake_run(tmp_path, "run")
    (run / "final").mkdir()  # a finished run whose checkpoints/ were deleted: nothing to resume
    (run / "final" / "model.safetensors").write_text("kept")
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(run)}))
    assert _error(["train", str(recipe), "train.resume=true"], capsys) == (
        f"output.dir: {run} holds a finished run (final/) and no checkpoint to resume; name a new folder, or move "
        "that run away")
    assert (run / "final" / "model.safetensors").read_text() == "kept"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.md").write_text("kept")
    assert _error(["train", str(recipe), f"output.dir={tmp_path / 'notes'}"], capsys) == (
        f"output.dir: {tmp_path / 'notes'} holds files and is no run folder; name a new or empty folder")
    assert os.listdir(tmp_path / "notes") == ["todo.md"]


@pytest.mark.parametrize("command", ["merge", "push"])
def test_merge_and_push_name_a_run_folder_that_is_not_there(command: str, tmp_path: Path, capsys) -> None:
    argv = [command, str(tmp_path / "nowhere"), *(["--repo-id", "me/x", "--dry-run"] if command == "push" else [])]
    assert _error(argv, capsys) == f"{tmp_path / 'nowhere'}: no such run folder"


def test_push_without_login_merges_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    from tests.hub_runs import write_run

    run = write_run(tmp_path, "lora")
    monkeypatch.setattr("toolkit.hub.push.get_token", lambda: None)  # as on a machine never logged in
    capsys.readouterr()
    assert _error(["push", str(run), "--repo-id", "me/x", "--what", "merged"], capsys) == (
        "not logged in: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
    assert not (run / "upload").exists() and not (run / "final" / "merged").exists()


def test_export_of_a_model_folder_without_weights_writes_no_file(tmp_path: Path, capsys) -> None:
    from toolkit.data.tokenizer import train_tokenizer
    from toolkit.recipe.schema import TokenizerTraining

    model = tmp_path / "model"
    train_tokenizer(TokenizerTraining(vocab_size=320, corpus_documents=50), seed=0).save_pretrained(model)
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert _error(["export", str(model), "--format", "gguf", "--out", str(tmp_path / "m.gguf")], capsys) == (
        f"{model}: no weights to convert (no *.safetensors file)")
    assert not (tmp_path / "m.gguf").exists()


def _arena_run(folder: Path) -> Path:
    """A run folder whose recipe trained on arena data, with a final/ folder and no model: predict refuses what it
    refuses before the model would load."""
    (folder / "final").mkdir(parents=True)
    arena = {"source": "csv", "path": "train.csv", "format": "arena", "label_tokens": ["A", "B", "tie"],
             "truncate_tokens": 64}
    write_recipe(folder, dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"], "data": arena}), "recipe.resolved.yaml")
    return folder


@pytest.mark.parametrize(("data", "expected"), [
    ("", "--data: {tmp} is a folder; name a CSV or Parquet file"),
    ("test.parquet", "--data: cannot read {tmp}/test.parquet: Parquet magic bytes not found in footer.")])
def test_predict_names_its_data_flag(data: str, expected: str, tmp_path: Path, capsys) -> None:
    _arena_run(tmp_path / "run")
    (tmp_path / "test.parquet").write_text("id,prompt\n")  # a CSV named .parquet
    argv = ["predict", str(tmp_path / "run"), "--data", f"{tmp_path}/{data}", "--out", str(tmp_path / "sub.csv")]
    assert _error(argv, capsys).startswith(expected.format(tmp=tmp_path))
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize(("out", "expected"), [
    ("test.csv", "--out: {tmp}/test.csv is the --data file; name another file for the submission"),
    ("precious.csv", "--out: {tmp}/precious.csv exists and is no submission (its first line is not "
                     "id,winner_model_a,winner_model_b,winner_tie); name a new file, or remove it first"),
    ("afile/sub.csv", "--out: {tmp}/afile is a file, not a folder"),
    ("nofolder/sub.csv", "--out: {tmp}/nofolder is no folder that exists; name a .csv file in one")])
def test_predict_never_replaces_what_is_no_submission(out: str, expected: str, tmp_path: Path, capsys) -> None:
    """Its own --data, a file that is no earlier submission, or a path under a file: refused before the model loads
    (the run has none), every file kept as it was."""
    _arena_run(tmp_path / "run")
    data = tmp_path / "test.csv"
    data.write_bytes(ARENA_TEST.read_bytes())
    (tmp_path / "precious.csv").write_text("id,score\n1,0.5\n")
    (tmp_path / "afile").write_text("kept")
    before = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    argv = ["predict", str(tmp_path / "run"), "--data", str(data), "--out", f"{tmp_path}/{out}"]
    assert _error(argv, capsys) == expected.format(tmp=tmp_path)
    assert {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


def test_predict_refuses_ids_given_twice_before_the_model(tmp_path: Path, capsys) -> None:
    """A submission with an id twice is rejected by the competition: the file, the id and both its lines are named."""
    from toolkit.data.arena import read_arena, write_arena

    rows, _ = read_arena(ARENA_TEST)
    data = write_arena([*rows[:3], rows[1]], tmp_path / "test.csv")
    argv = ["predict", str(_arena_run(tmp_path / "run")), "--data", str(data), "--out", str(tmp_path / "sub.csv")]
    assert _error(argv, capsys) == (f"--data: id {rows[1].id!r} is given twice, at {data}:3 and {data}:5; a "
                                    "submission names each comparison once")
    assert not (tmp_path / "sub.csv").exists()


def test_a_model_that_is_no_folder_and_out_of_reach_on_the_hub(tmp_path: Path, capsys, monkeypatch) -> None:
    """A mistyped folder shaped like a hub id is looked up on the hub; offline, the line says it was taken as one."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without the network
    model = {"name_or_path": "models/no-such-model", "precision": "fp32"}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=model, output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys).startswith(
        "model.tokenizer: cannot load 'models/no-such-model' (from model.name_or_path), a hub id (no such folder here "
        "or beside the recipe): ")
    assert not (tmp_path / "run").exists()


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty-model").mkdir()
    model = {"name_or_path": str(tmp_path / "empty-model"), "precision": "fp32"}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=model, output={"dir": str(tmp_path / "run")}))
    assert _error(["train", str(recipe)], capsys) == (
        f"model.tokenizer: cannot load '{tmp_path / 'empty-model'}' (from model.name_or_path): no tokenizer in it "
        "(none of tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json)")
    assert not (tmp_path / "run").exists()


def test_eval_of_a_model_folder_without_a_tokenizer_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys) -> None:
    """A config.json and no tokenizer files: one line saying so (transformers' error was cut to "Couldn't instantiate
    the backend tokenizer from one of: ")."""
    import toolkit.model.loading
    from tests.test_evals_fixtures import tiny_model

    folder = tmp_path / "model"
    tiny_model().config.save_pretrained(folder)
    monkeypatch.setattr(toolkit.model.loading, "load_merged", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["eval", "--model", str(folder), "--suite", str(needle_suite(tmp_path)), "--out", str(tmp_path / "out")]
    assert _error(argv, capsys) == (
        f"--model: cannot load {str(folder)!r}: no tokenizer in it (none of tokenizer.json, tokenizer_config.json, "
        "tokenizer.model, vocab.json)")
    assert not (tmp_path / "out").exists()


def test_corpus_without_the_tokenizer_names_the_folder_and_the_flag(tmp_path: Path, capsys) -> None:
    """Run outside the repository, ``corpus`` looked for the small model under the working folder."""
    assert _error(["corpus", "--out", str(tmp_path / "corpus"), "--model", str(tmp_path / "none")], capsys) == (
        f"--model: no tokenizer in {tmp_path / 'none'} (`make small-model` writes one under the repository's "
        "models/); name the folder of SmolLM2-135M-Instruct with --model")
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize(("module", "args", "expected"), [
    ("toolkit.evals.lmeval_data", ["{tmp}/taken/x"], "folder: {tmp}/taken is a file, not a folder"),
    ("toolkit.data.arena_example", ["{tmp}/taken"], "folder: {tmp}/taken is a file, not a folder"),
    ("benchmarks.gpu_parts", ["split", "LICENSE", "--out", "{tmp}/parts", "--part-mib", "0"],
     "--part-mib: 0 is not a positive number of MiB"),
    ("benchmarks.gpu_parts", ["split", "LICENSE", "--out", "{tmp}/taken/parts"],
     "--out: {tmp}/taken is a file, not a folder"),
    ("benchmarks.gpu_parts", ["join", "--parts", "{tmp}", "--into", "{tmp}/taken"],
     "--into: {tmp}/taken is a file, not a folder")])
def test_module_commands_check_where_they_write_first(module: str, args: list[str], expected: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A folder under a file was a traceback after the work (or, for parts of 0 MiB, parts without end)."""
    import importlib

    (tmp_path / "taken").write_text("kept")
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([arg.format(tmp=tmp_path) for arg in args])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {expected.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize(("module", "args", "expected"), [
    ("benchmarks.train_throughput", ["--json", "{tmp}/taken/rows.json"],
     "argument --json: {tmp}/taken/rows.json: {tmp}/taken is a file, not a folder"),
    ("benchmarks.train_throughput", ["--steps", "0"], "argument --steps: '0' is not a positive whole number"),
    ("benchmarks.attention_kernels", ["--rows", "0"], "argument --rows: '0' is not a positive whole number"),
    ("benchmarks.max_context", ["--memory-gib", "-1"], "argument --memory-gib: '-1' is not a positive number"),
    ("benchmarks.max_context", ["--limit", "10"], "--limit: 10 is below --start 1024"),
    ("benchmarks.fp8_offload_loss", ["--seeds", "0", "-1"],
     "argument --seeds: '-1' is not a seed (a whole number from 0 to 4294967295)"),
    ("benchmarks.context_probe", ["--json", "{tmp}"], "argument --json: {tmp} is a folder; name a file"),
    ("benchmarks.fp8_offload_loss", ["--out", "{tmp}/taken/x"],
     "argument --out: {tmp}/taken/x: {tmp}/taken is a file, not a folder"),
    ("benchmarks.gpu_check", ["--out", "{tmp}/taken/x"],
     "argument --out: {tmp}/taken/x: {tmp}/taken is a file, not a folder"),
    ("benchmarks.gpu_demo", ["--device", "cpu", "--run", "{tmp}/kept", "--out", "{tmp}/out"],
     "--run: {tmp}/kept holds no run, and the demo replaces its run folder: give another --run")])
def test_benchmarks_check_their_numbers_and_outputs_before_measuring(module: str, args: list[str], expected: str,
                                                                     tmp_path: Path, capsys) -> None:
    """A results file under a file was a traceback after the whole benchmark; 0 steps ran rows of errors."""
    import importlib

    (tmp_path / "taken").write_text("kept")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("kept")  # a folder of the user's: the demo deleted it
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([arg.format(tmp=tmp_path) for arg in args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected.format(tmp=tmp_path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "taken"]
    assert (tmp_path / "kept" / "notes.txt").read_text() == "kept"


def test_a_module_command_mistake_is_one_line(capsys) -> None:
    from toolkit.preference import measure

    with pytest.raises(SystemExit) as stop:
        measure.main(["--bogus"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "unrecognized arguments: --bogus" in err, err


def test_eval_refuses_a_hand_edited_result_in_out_before_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys) -> None:
    """Results recorded in ``--out`` are reused; one hand-edited (a niah entry without its grid) is one line naming
    the file and field before the model loads, not a traceback after it."""
    import toolkit.model.loading
    from tests.test_evals_fixtures import tiny_model, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    out.mkdir()
    recorded = out / "needles.json"
    recorded.write_text(json.dumps({"suite": "needles", "tasks": {"passkey": {"type": "niah", "score": 0.5}}}))
    monkeypatch.setattr(toolkit.model.loading, "load_merged", lambda *a, **k: pytest.fail("the model was loaded"))
    capsys.readouterr()
    argv = ["eval", "--model", str(folder), "--suite", str(needle_suite(tmp_path)), "--out", str(out)]
    assert _error(argv, capsys) == f"{recorded}: tasks.passkey.grid: Field required"
