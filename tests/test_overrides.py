"""Dotted key=value overrides go through the same validation as the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import UserError
from toolkit.recipe.loading import apply_override, load_recipe, parse_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny-passkey.yaml"


def test_parse_path() -> None:
    assert parse_path("train.stages[1].seq_len") == ["train", "stages", 1, "seq_len"]
    assert parse_path("a[0][2].b") == ["a", 0, 2, "b"]


def test_values_are_typed_and_nested_keys_created() -> None:
    data = {"train": {"stages": [{"seq_len": 1}]}}
    apply_override(data, "train.stages[0].seq_len=2048")
    apply_override(data, "train.gradient_checkpointing=true")
    apply_override(data, "eval.suites=[a.yaml, b.yaml]")
    assert data == {"train": {"stages": [{"seq_len": 2048}], "gradient_checkpointing": True},
                    "eval": {"suites": ["a.yaml", "b.yaml"]}}


def test_overrides_reach_the_typed_recipe() -> None:
    recipe = load_recipe(TINY, ["train.max_steps=5", "stages[2].seq_len=2048", "stages[2].rope.factor=8",
                                "method.kind=lora", "method.lora.r=4"])
    assert recipe.train.max_steps == 5
    assert recipe.train.stages[2].seq_len == 2048 and recipe.train.stages[2].rope.factor == 8
    assert recipe.method.kind == "lora" and recipe.method.lora.r == 4


@pytest.mark.parametrize("override,expected", [
    ("train.max_steps=-5", "train.max_steps: Input should be greater than 0"),
    ("stages[2].seq_len=2048", "train.stages[2].rope.factor: 4.0 x original length 256 covers 1024"),
    ("stages[7].lr=1", "index 7 is out of range"),
    ("train.stages[0].nonsense=1", "train.stages[0].nonsense: unknown key"),
    ("method.kind=qlora", "method.kind: Input should be 'full' or 'lora'"),
    ("no_equals_sign", "expected key=value"),
    ("train..x=1", "cannot read key"),
])
def test_bad_overrides_are_user_errors(override: str, expected: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        load_recipe(TINY, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
