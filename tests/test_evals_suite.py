"""Suite YAMLs: every shipped file validates; mistakes are one line naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_model import with_corpus_marks
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.evals.lm_eval import LmEvalTask
from toolkit.evals.niah import NiahTask
from toolkit.evals.rope_compare import RopeCompareTask
from toolkit.evals.suite import load_suite

EVALS = Path(__file__).resolve().parents[1] / "evals"
LM_EVAL_TASKS = EVALS / "lm_eval_tasks"
SUITES = sorted(p for p in EVALS.rglob("*.yaml") if LM_EVAL_TASKS not in p.parents)


def test_suites_are_shipped():
    names = {p.name for p in SUITES}
    assert {"niah.yaml", "niah-tiny.yaml", "ruler.yaml", "ruler-tiny.yaml", "short-context.yaml"} <= names


@pytest.mark.parametrize("path", with_corpus_marks(SUITES), ids=lambda p: p.name)
def test_shipped_suite_validates(path: Path):
    suite = load_suite(path)
    assert suite.name == path.stem
    assert len({t.key for t in suite.tasks}) == len(suite.tasks) >= 1


def test_niah_tiny_grid_and_rope_settings():
    suite = load_suite(EVALS / "niah-tiny.yaml")
    grids = [t for t in suite.tasks if isinstance(t, NiahTask)]
    assert all(g.lengths == [128, 256, 512, 1024, 2048] and g.depths == [0.0, 0.25, 0.5, 0.75, 1.0] for g in grids)
    assert [g.num_needles for g in grids] == [1, 2]
    rope = next(t for t in suite.tasks if isinstance(t, RopeCompareTask))
    assert {"none", "linear", "yarn"} <= set(rope.settings)
    assert rope.settings["yarn"].factor == 4.0


def test_include_and_relative_paths():
    suite = load_suite(EVALS / "long-context.yaml")
    assert [t.key for t in suite.tasks] == ["single", "multikey", "ruler", "pg19"]
    short = load_suite(EVALS / "short-context.yaml")
    lm_eval = short.tasks[0]
    assert isinstance(lm_eval, LmEvalTask) and Path(lm_eval.include_path or "") == LM_EVAL_TASKS


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


@pytest.mark.parametrize("text, expected", [
    ("name: s\ntasks:\n  - type: niah\n    lengths: [64]\n    colour: red\n", ":5: tasks[0].colour: unknown key"),
    ("name: s\ntasks:\n  - type: niah\n    lenghts: [64]\n",  # a required key misspelt: the typo, not the key missing
     ":4: tasks[0].lenghts: unknown key (did you mean lengths?)"),
    ("name: s\ntasks:\n  - {type: niah, lengths: [64], sampels: 2}\n", ":3: tasks[0].sampels: unknown key (did you "
     "mean samples?)"),
    ("name: s\ntasks:\n  - type: niah\n    lengths: [64]\n    depths: [0.5, 1.5]\n",
     ":5: tasks[0].depths[1]: Input should be less than or equal to 1"),
    ("name: s\ntasks:\n  - type: niah\n", "tasks[0].lengths: Field required"),
    ("name: s\ntasks:\n  - type: needle\n", "tasks[0].type: must be one of niah, ruler"),
    ("name: s\ntasks:\n  - type: [niah]\n", "tasks[0].type: must be one of niah, ruler"),
    ("name: s\ntasks:\n  - {type: niah, lengths: [64, 128, 64]}\n",
     ":3: tasks[0].lengths: 64 given more than once"),
    ("name: s\ntasks:\n  - {type: niah, lengths: [64], depths: [0.5, 0.5]}\n", "tasks[0].depths: 0.5 given more than"),
    ("name: s\ntasks:\n  - {type: niah, lengths: [64], depths: []}\n", "tasks[0].depths: List should have at least 1"),
    ("name: s\ntasks:\n  - {type: ruler, lengths: [64], tasks: [vt, vt]}\n", "tasks[0].tasks: vt given more than"),
    ("name: s\ntasks:\n  - {type: lm_eval, tasks: [a, a]}\n", "tasks[0].tasks: a given more than once"),
    ("name: s\ntasks:\n  - {type: lm_eval, tasks: [a], limit: -0.5}\n", "tasks[0].limit: a whole number of"),
    ("name: s\ntasks:\n  - {type: lm_eval, tasks: [a], limit: 0.0}\n", "tasks[0].limit: a whole number of"),
    ("name: s\ntasks:\n  - {type: lm_eval, tasks: [a], limit: 2.5}\n", "tasks[0].limit: a whole number of"),
    ("name: s\ntasks:\n  - type: ruler\n    lengths: [64]\n    tasks: [vt, qa]\n",
     "tasks[0].tasks[1]: Input should be"),
    ("name: s\ntasks:\n  - {type: perplexity, length: 64, bucket: 128}\n", "bucket 128 is longer than length 64"),
    ("name: s\ntasks:\n  - type: niah\n    lengths: [64]\n    haystack: {source: text}\n",
     "tasks[0].haystack: source 'text' needs a path"),
    ("name: s\ntasks:\n  - type: rope_compare\n    lengths: [64]\n    settings: {a: {type: linear, beta_fast: 2}}\n",
     "tasks[0].settings.a.beta_fast: does not apply to rope type 'linear'"),
    ("name: s\ntasks:\n  - {type: niah, lengths: [64]}\n  - {type: niah, lengths: [32]}\n",
     "two tasks are named 'niah'"),
    ("name: s\ntasks:\n  - {type: niah, lengths: [64], haystack: {source: text, path: gone.txt}}\n",
     "tasks[0].haystack.path: no such text file /"),
    ("name: s\ntasks:\n  - {type: lm_eval, tasks: [x], include_path: nowhere}\n",
     "tasks[0].include_path: no such folder nowhere"),
    ("name: s\n", "no tasks"),
    ("name: s\ninclude: [missing.yaml]\n", "include: no such suite file 'missing.yaml'"),
    ("name: s\ntasks: [\n", "YAML syntax error"),
])
def test_mistakes_are_one_line(tmp_path: Path, text: str, expected: str):
    assert expected in _error(tmp_path, text)


def test_include_cycle(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("name: a\ninclude: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("name: b\ninclude: [a.yaml]\n")
    with pytest.raises(UserError, match="include cycle"):
        load_suite(tmp_path / "a.yaml")


def test_eval_command_rejects_bad_suite_before_loading(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntasks:\n  - type: niah\n    lengths: [0]\n")
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--suite", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}:4: tasks[0].lengths[0]: Input should be greater than 0"
