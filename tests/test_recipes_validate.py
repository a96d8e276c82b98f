"""Every shipped YAML validates; broken recipes exit 2 with one line naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.real_model import loadable, with_corpus_marks
from toolkit.cli import main
from toolkit.recipe.loading import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", with_corpus_marks(RECIPES), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_validates(path: Path) -> None:
    """Each recipe loads, and runs into ``runs/<its file's stem>``, where the docs and defaults look for it (e.g.
    ``toolkit.preference.measure``'s ``--recipe`` and ``--run``)."""
    recipe = load_recipe(path)
    assert recipe.run_dir == Path("runs") / path.stem, path


NOT_SHIPPED = {"llama3-8b-instruct-arena-8k.yaml": ("train.data.mixture[0].path", "../data/lmsys-arena/train.csv")}
"""Recipes whose data the user downloads (the competition's file): the field and path ``validate`` names until then."""


def test_validate_command_accepts_all_recipes(capsys) -> None:
    """Offline too: the hub ids a recipe names are left to train, and listed."""
    recipes = [path for path in loadable(RECIPES) if path.name not in NOT_SHIPPED]
    assert main(["validate", *map(str, recipes)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok") == len(recipes)
    assert ("llama3-8b-32k-lora.yaml: ok (hub ids left to train: meta-llama/Meta-Llama-3-8B, emozilla/pg19)\n"
            in out)


@pytest.mark.parametrize("name", sorted(NOT_SHIPPED))
def test_a_recipe_whose_data_is_not_here_names_the_file(name: str, capsys) -> None:
    field, data = NOT_SHIPPED[name]
    if (ROOT / "recipes" / data).is_file():
        pytest.skip(f"{data} is here")
    recipe = ROOT / "recipes" / name
    assert main(["validate", str(recipe)]) == 2
    beside_the_recipe = os.path.normpath(recipe.parent / data)  # not ../data/..., which reads as outside the repo
    assert capsys.readouterr().err == f"error: {recipe}: {field}: no such file: {beside_the_recipe}\n"


def test_gradient_1m_schedule_is_expressible() -> None:
    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-1m-progressive.yaml")
    stages = [(s.seq_len, s.rope.theta) for s in recipe.train.stages]
    assert stages == [(65536, 15.3e6), (262144, 207.1e6), (524288, 1.06e9), (1048576, 2.80e9)]


def _mutate(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "tiny-passkey.yaml").read_text())
    edit(data)
    path = tmp_path / "mutated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(path: list, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


MUTATIONS = {
    "unknown key": (_set(["train", "stagez"], 1), "train.stagez: unknown key"),
    "negative seed": (_set(["seed"], -1), "seed: Input should be greater than or equal to 0"),
    "seed beyond numpy's": (_set(["seed"], 2**32), "seed: Input should be less than 4294967296"),
    "wrong type": (_set(["train", "stages", 0, "seq_len"], "long"), "train.stages[0].seq_len:"),
    "negative length": (_set(["train", "stages", 1, "seq_len"], -1024), "train.stages[1].seq_len:"),
    "shorter stage": (_set(["train", "stages", 2, "seq_len"], 128), "train.stages[2].seq_len: 128 is shorter"),
    "rope factor too small": (_set(["train", "stages", 2, "rope", "factor"], 2.0),
                              "train.stages[2].rope.factor: 2.0 x original length 256 covers 512 tokens"),
    "key of another rope type": (_set(["train", "stages", 2, "rope", "low_freq_factor"], 1.0),
                                 "train.stages[2].rope.low_freq_factor: does not apply"),
    "bad attention": (_set(["model", "attention"], "fast"), "model.attention:"),
    "ulysses with stages of different batch sizes": (_set(["parallel"], {"sequence": "ulysses", "degree": 2}),
                                                     "train.stages[1].batch_size: 16 differs from stages[0]'s 64"),
    "context parallel over packed rows": (_set(["parallel"], {"sequence": "context_parallel", "degree": 2}),
                                          "data.packing: pack under parallel.sequence: context_parallel"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_mutated_recipe_exits_2_with_one_line(case: str, tmp_path: Path, capsys) -> None:
    edit, expected = MUTATIONS[case]
    path = _mutate(tmp_path, edit)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err and str(path) in err


@pytest.mark.parametrize("content,expected", [
    ("name: x\ntrain: [1, 2\n", "YAML syntax error"),
    ("", "file is empty"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: x\nseed: 1\ntrain:\n  stages:\n    - {seq_len: 64, lr: 1.0, lr: 2.0}\nseed: 2\n",
     ":5: train.stages[0].lr: given twice (first on line 5)"),
])
def test_broken_files_exit_2(content: str, expected: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and str(path) in err


def test_yaml_error_names_the_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel:\n  name_or_path: a\n  attention: [sdpa\ntrain: {}\n")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:5" in capsys.readouterr().err


def test_missing_file_exits_2_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "validate", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {missing}: no such file"


def test_fp16_training_is_refused_with_the_way_out(capsys) -> None:
    """fp16 weights cannot be trained with loss scaling (no fp32 master weights): exit 2 naming the field and bf16."""
    recipe = ROOT / "recipes" / "tiny-passkey.yaml"
    assert main(["validate", str(recipe), "--set", "model.precision=fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {recipe}: override 'model.precision=fp16': model.precision: fp16 does not "
                          "train here")
    assert "use bf16" in err


def test_a_merge_key_may_override_what_it_merges(tmp_path: Path) -> None:
    from toolkit.recipe.yaml_files import read_yaml

    path = tmp_path / "merged.yaml"
    path.write_text("base: &b {a: 1, b: 2}\nderived:\n  <<: *b\n  a: 3\n")
    data, _ = read_yaml(path)
    assert data["derived"] == {"a": 3, "b": 2}
