"""Our lm-eval task folder loads in lm-eval, its data is reproducible, and the bridge runs offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from lm_eval.api.instance import Instance

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.evals import lm_eval, lmeval_bridge
from toolkit.evals.api import run_suites
from toolkit.evals.lm_eval import LmEvalTask
from toolkit.evals.lmeval_data import DATASETS, DEFAULT_FOLDER, main
from toolkit.evals.results import SuiteResults
from toolkit.evals.suite import load_suite

TASKS = Path(__file__).resolve().parents[1] / "evals" / "lm_eval_tasks"


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval's task YAML: ``!function`` names a hook (read here as its dotted name)."""


def _hook(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_TaskYamlLoader.add_constructor("!function", _hook)
TASK_CONFIGS = {path: yaml.load(path.read_text(encoding="utf-8"), _TaskYamlLoader)
                for path in sorted(TASKS.rglob("*.yaml"))}
"""Every task YAML of the folder, as its file says (so a new task file is validated too)."""
TASK_NAMES = [config["task"] for config in TASK_CONFIGS.values()]


@pytest.fixture(scope="module")
def loaded_tasks():
    manager = lmeval_bridge.task_manager(TASK_NAMES, str(TASKS))
    return manager.load(TASK_NAMES)["tasks"]


def test_task_yamls_load_with_task_manager(loaded_tasks):
    """Every task YAML of the folder loads with its documents, one per line of its data file; the passkey tasks'
    data (``toolkit.evals.lmeval_data``) as many as the generator writes, and their prompts end in the question
    whose answer is the target."""
    assert TASK_NAMES and len(set(TASK_NAMES)) == len(TASK_NAMES)
    assert set(loaded_tasks) == set(TASK_NAMES)
    for path, config in TASK_CONFIGS.items():
        task, data_file = loaded_tasks[config["task"]], config["dataset_kwargs"]["data_file"]
        docs = list(task.test_docs())
        lines = (path.parent / data_file).read_text(encoding="utf-8").splitlines()
        assert len(docs) == sum(1 for line in lines if line.strip()) > 0, path.name
        if data_file not in DATASETS:
            continue
        sizes, per_size, _, _ = DATASETS[data_file]
        assert len(docs) == len(sizes) * per_size, path.name
        for doc in docs:
            text, target = task.doc_to_text(doc), str(task.doc_to_target(doc))
            assert text.endswith(f"The pass key for {doc['key']} is") and target.strip() == doc["answer"]
            assert f" The pass key for {doc['key']} is {doc['answer']}." in text


def _scored(task, doc: dict, generated: str) -> dict:
    """``generated`` as the model's continuation, through the task's own filters and metrics."""
    instance = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0,
                        metadata=(task.config.task, 0, 1))
    instance.resps = [generated]
    for ensemble in task._filters:
        ensemble.apply([instance])
    return {name: task.process_results(doc, [out]) for name, out in instance.filtered_resps.items()}


def test_generated_answers_score_what_they_are(loaded_tasks):
    """A generation task's filters and metric count the right number as right and another as wrong, whatever
    surrounds it (the model continues "... is" with a space)."""
    for config in TASK_CONFIGS.values():
        if config["output_type"] != "generate_until":
            continue
        task = loaded_tasks[config["task"]]
        doc = next(iter(task.test_docs()))
        for generated, expected in [(f" {doc['answer']}", 1.0), (f"{doc['answer']}.", 1.0),
                                    (f" {int(doc['answer']) + 1}", 0.0), (" none", 0.0)]:
            scores = [value for metrics in _scored(task, doc, generated).values() for value in metrics.values()]
            assert scores == [expected], (config["task"], generated, scores)


def test_short_context_documents_fit_the_tiny_training_length(loaded_tasks):
    task = loaded_tasks["longctx_passkey_short"]
    tok = tiny_tokenizer()
    lengths = [len(tok(task.doc_to_text(d) + " " + task.doc_to_target(d))["input_ids"]) for d in task.test_docs()]
    assert 100 < min(lengths) and max(lengths) <= 256


def test_shipped_data_matches_the_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    main([str(tmp_path)])  # python -m toolkit.evals.lmeval_data FOLDER
    written = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(path.name for path in written) == sorted(DATASETS)
    for path in written:
        assert path.read_bytes() == (DEFAULT_FOLDER / path.name).read_bytes(), path.name


def test_summarize_converts_numpy_and_picks_the_metric():
    output = {"results": {"a": {"alias": "a", "sample_len": 4, "acc,none": np.float32(0.5), "acc_stderr,none": 0.1},
                          "b": {"exact_match,number": np.float64(0.25), "acc,none": 1.0}}}
    metrics, score = lmeval_bridge.summarize(output, None)
    assert metrics == {"a": {"acc,none": 0.5}, "b": {"exact_match,number": 0.25, "acc,none": 1.0}}
    assert all(type(v) is float for m in metrics.values() for v in m.values())
    assert score == pytest.approx((0.5 + 0.25) / 2)
    assert lmeval_bridge.summarize(output, "acc")[1] == pytest.approx(0.75)


def test_summarize_leaves_out_groups_and_lengths_ruler_did_not_run():
    output = {"results": {"grp": {"acc,none": 0.82}, "grp_a": {"acc,none": 0.9}, "grp_b": {"acc,none": 0.1},
                          "niah_single_1": {"4096,none": 0.75, "8192,none": -1, "acc,none": -1.0}},
              "group_subtasks": {"grp": ["grp_a", "grp_b"]}}
    metrics, score = lmeval_bridge.summarize(output, None)
    assert metrics["niah_single_1"] == {"4096,none": 0.75, "acc,none": -1.0}  # -1 is only RULER's mark by length
    assert metrics["grp"] == {"acc,none": 0.82}  # shown, not counted twice in the score
    assert score == pytest.approx((0.9 + 0.1 + 0.75) / 3)


def _suite(tmp_path: Path, tasks: str) -> str:
    path = tmp_path / "lm.yaml"
    path.write_text(f"name: lm\ntasks:\n  - type: lm_eval\n    tasks: {tasks}\n    include_path: {TASKS}\n"
                    "    limit: 2\n")
    return str(path)


def test_bridge_runs_offline_on_a_tiny_model(tmp_path: Path, monkeypatch):
    suite = _suite(tmp_path, "[longctx_passkey, longctx_passkey_short]")
    out = run_suites(tiny_model(max_positions=2048), tiny_tokenizer(), [suite], tmp_path, "base", "tiny")
    entry = out["lm"]["tasks"]["lm_eval"]
    assert set(entry["metrics"]) == {"longctx_passkey", "longctx_passkey_short"}
    em = entry["metrics"]["longctx_passkey"]["exact_match,number"]
    acc = entry["metrics"]["longctx_passkey_short"]["acc,none"]
    assert em in (0.0, 0.5, 1.0) and acc in (0.0, 0.5, 1.0)
    assert entry["score"] == pytest.approx((em + acc) / 2)
    raw = json.loads((tmp_path / "base" / entry["lm_eval_json"]).read_text())
    assert raw["results"]["longctx_passkey_short"]["acc,none"] == acc
    assert raw["configs"]["longctx_passkey"]["output_type"] == "generate_until"
    assert raw["n-samples"]["longctx_passkey"]["effective"] == 2

    monkeypatch.setattr(lm_eval, "evaluate", lambda *a: pytest.fail("a finished task must not rerun"))
    again = run_suites(tiny_model(max_positions=2048), tiny_tokenizer(), [suite], tmp_path, "base", "tiny")
    assert again["lm"]["tasks"]["lm_eval"]["metrics"] == entry["metrics"]



def test_task_datasets_are_read_from_the_index_groups_and_tags_expanded(tmp_path: Path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name in ("local_a", "local_b"):  # one dataset for both: checked once
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ntag: [local_tag]\ndataset_path: json\n"
            f"dataset_kwargs: {{data_files: {{test: {tmp_path / 'docs.jsonl'}}}}}\n"
            "output_type: loglikelihood\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n")
    names = ["mmlu", "ruler", "local_tag"]
    manager = lmeval_bridge.task_manager(names, str(folder))
    found = lmeval_bridge.task_datasets(manager, names)
    assert [(d.path, d.task, d.kwargs) for d in found] == [  # mmlu's 57 subjects share one; RULER makes its own
        ("cais/mmlu", "mmlu_abstract_algebra", {}),
        ("json", "local_a", {"data_files": {"test": str(tmp_path / "docs.jsonl")}})]

    task = lm_eval.LmEvalTask(type="lm_eval", tasks=["local_tag"], include_path=str(folder))
    with pytest.raises(lm_eval.UserError, match=r"^lm_eval task lm_eval: tasks: dataset 'json' of lm-eval task local_a "
                                                r"cannot be opened: .*docs\.jsonl"):
        lm_eval.check_lm_eval(task)
    (tmp_path / "docs.jsonl").write_text('{"q": "2+2=", "a": "4"}\n')
    lm_eval.check_lm_eval(task)


def _own_data_task(tmp_path: Path, builder: str) -> lm_eval.LmEvalTask:
    """A local task that builds its own data (``custom_dataset``, as lm-eval's RULER does) with ``builder``'s code."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "builder.py").write_text(builder)
    (folder / "own_data.yaml").write_text(
        "task: own_data\ndataset_path: ''\ncustom_dataset: !function builder.build\noutput_type: loglikelihood\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n")
    return lm_eval.LmEvalTask(type="lm_eval", tasks=["own_data"], include_path=str(folder))


def test_task_code_that_does_not_import_stops_before_the_model(tmp_path: Path):
    task = _own_data_task(tmp_path, "import a_package_not_installed\n\n\ndef build(**kwargs):\n    pass\n")
    with pytest.raises(lm_eval.UserError) as raised:
        lm_eval.check_lm_eval(task)
    assert str(raised.value) == ("lm_eval task lm_eval: tasks: the code of lm-eval task own_data does not import: No "
                                 "module named 'a_package_not_installed'")


def test_data_a_task_builds_out_of_reach_is_one_line(tmp_path: Path):
    task = _own_data_task(tmp_path, "def build(**kwargs):\n    raise ConnectionError(\"Couldn't reach 'x/essays' on "
                                    "the Hub (LocalEntryNotFoundError)\")\n")
    lm_eval.check_lm_eval(task)  # its code imports; whether its data can be built shows when it runs
    with pytest.raises(lm_eval.UserError) as raised:
        lm_eval.evaluate(tiny_model(max_positions=256), tiny_tokenizer(), task)
    assert str(raised.value) == ("lm_eval task lm_eval: tasks: its tasks build their data when they run, and it could "
                                 "not be reached: Couldn't reach 'x/essays' on the Hub (LocalEntryNotFoundError)")


def test_results_of_an_edited_task_folder_are_not_reused(tmp_path: Path):
    """The content of ``include_path`` is part of what recorded results are reused for: a task YAML or its data
    edited since (a corrected target) is evaluated again, an unchanged folder is not."""
    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    task = LmEvalTask(type="lm_eval", tasks=["longctx_passkey"], include_path=str(folder))
    path = tmp_path / "lm.json"
    SuiteResults(path, "lm", "base", "tiny", "f").record(task, summary={"score": 0.0})
    assert SuiteResults(path, "lm", "base", "tiny", "f").finished(task) is not None
    yaml_file = folder / "longctx" / "passkey.yaml"
    yaml_file.write_text(yaml_file.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert SuiteResults(path, "lm", "base", "tiny", "f").finished(task) is None


def test_a_metric_its_tasks_do_not_declare_stops_before_the_model():
    task = lm_eval.LmEvalTask(type="lm_eval", name="pk", tasks=["longctx_passkey", "longctx_passkey_short"],
                              include_path=str(TASKS), metric="exact_match")
    with pytest.raises(lm_eval.UserError) as raised:
        lm_eval.check_lm_eval(task)
    assert str(raised.value) == ("lm_eval task pk: metric: lm-eval task longctx_passkey_short has no 'exact_match' "
                                 "(its metrics: acc)")
    lm_eval.check_lm_eval(task.model_copy(update={"tasks": ["longctx_passkey"]}))


def test_a_task_read_from_a_suite_is_named_by_its_file_and_field(tmp_path: Path):
    """The checks that ask lm-eval's index name the suite file and field, as the suite's own errors do; a task of an
    included suite, its own file."""
    inner = tmp_path / "inner.yaml"
    inner.write_text(f"name: inner\ntasks:\n  - {{type: lm_eval, tasks: [longctx_passkey_short], "
                     f"include_path: {TASKS}, metric: exact_match}}\n")
    (tmp_path / "outer.yaml").write_text("name: outer\ninclude: [inner.yaml]\n")
    [task] = load_suite(tmp_path / "outer.yaml").tasks
    assert isinstance(task, LmEvalTask)
    with pytest.raises(lm_eval.UserError) as raised:
        lm_eval.check_lm_eval(task)
    assert str(raised.value) == (f"{inner}: tasks[0].metric: lm-eval task longctx_passkey_short has no 'exact_match' "
                                 "(its metrics: acc)")


def test_a_metric_defined_by_a_function_is_known_by_its_name():
    manager = lmeval_bridge.task_manager(["code2text_go"], None)
    assert "smoothed_bleu_4" in lmeval_bridge.declared_metrics(manager, ["code2text_go"])["code2text_go"]
