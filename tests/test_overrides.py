"""Dotted key=value overrides go through the same validation as the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import UserError
from toolkit.recipe.loading import apply_override, load_recipe, parse_path
from toolkit.recipe.yaml_files import format_loc

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny-passkey.yaml"


def test_parse_path() -> None:
    assert parse_path("train.stages[1].seq_len") == ["train", "stages", 1, "seq_len"]
    assert parse_path("a[0][2].b") == ["a", 0, 2, "b"]
    assert parse_path("train.stages.1.seq_len") == ["train", "stages", 1, "seq_len"]  # as other tools write it


def test_a_path_shown_with_a_dotted_key_reads_back() -> None:
    """A key that holds a dot (a niah depth) is quoted in brackets, so the path is one reading."""
    loc = ["tasks", "ruler-4k", "grid", "256", "0.5", 0]
    assert format_loc(loc) == 'tasks.ruler-4k.grid.256["0.5"][0]'
    assert parse_path(format_loc(loc)) == ["tasks", "ruler-4k", "grid", 256, "0.5", 0]  # digits read as an index
    assert format_loc(["a b", "x.y"]) == '["a b"]["x.y"]' and parse_path('["a b"]["x.y"]') == ["a b", "x.y"]
    for unreadable in (".train.max_steps", "train..max_steps", "train.", "a[0]b"):
        with pytest.raises(UserError, match="cannot read key"):
            parse_path(unreadable)


def test_values_are_typed_and_nested_keys_created() -> None:
    data = {"train": {"stages": [{"seq_len": 1}]}}
    apply_override(data, "train.stages[0].seq_len=2048")
    apply_override(data, "train.gradient_checkpointing=true")
    apply_override(data, "eval.suites=[a.yaml, b.yaml]")
    assert data == {"train": {"stages": [{"seq_len": 2048}], "gradient_checkpointing": True},
                    "eval": {"suites": ["a.yaml", "b.yaml"]}}


def test_a_digit_only_step_into_a_mapping_sets_its_key() -> None:
    """``grid.256`` reads as an index, but into a mapping that holds the key it is the key as YAML read it: a number
    or a string."""
    data = {"grid": {256: {"0.5": 1}}, "named": {"8": 1}, "rows": [[1, 2]]}
    assert apply_override(data, 'grid.256["0.5"]=2') == ("grid", 256, "0.5")
    assert apply_override(data, "named.8=3") == ("named", "8")
    with pytest.raises(UserError, match="index 512 of something that is not a list"):  # no such key: read as index
        apply_override(data, "grid.512=4")
    assert apply_override(data, "rows.0[-1]=5") == ("rows", 0, 1)
    assert data == {"grid": {256: {"0.5": 2}}, "named": {"8": 3}, "rows": [[1, 5]]}


def test_overrides_reach_the_typed_recipe() -> None:
    recipe = load_recipe(TINY, ["train.max_steps=5", "stages[2].seq_len=2048", "stages[2].rope.factor=8",
                                "method.kind=lora", "method.lora.r=4"])
    assert recipe.train.max_steps == 5
    assert recipe.train.stages[2].seq_len == 2048 and recipe.train.stages[2].rope.factor == 8
    assert recipe.method.kind == "lora" and recipe.method.lora.r == 4


@pytest.mark.parametrize("override,expected", [
    ("train.max_steps=-5", "train.max_steps: Input should be greater than 0"),
    ("stages[2].seq_len=2048", "train.stages[2].rope.factor: 4.0 x original length 256 covers 1024"),
    ("stages[7].lr=1", "override stages[7].lr: index 7 is out of range (the list holds 3)"),
    ("stages[-4]=1", "override stages[-4]: index -4 is out of range (the list holds 3)"),
    ("seed[0]=1", "override seed[0]: index 0 of something that is not a list"),
    ("train.stages[0].nonsense=1", "train.stages[0].nonsense: unknown key"),
    ("method.kind=qlora", "method.kind: Input should be 'full' or 'lora'"),
    ("no_equals_sign", "expected key=value"),
    ("=5", "override '=5': no key before '=' (key.path=value)"),
    ("train..x=1", "cannot read key"),
])
def test_bad_overrides_are_user_errors(override: str, expected: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        load_recipe(TINY, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override,expected", [
    ("train.lr=abc", "override 'train.lr=abc': train.lr: unknown key"),
    ("stages.0.seq_len=-5", "override 'stages.0.seq_len=-5': train.stages[0].seq_len: Input should be greater than 0"),
    ("model.rope={type: bogus}", "override 'model.rope={type: bogus}': model.rope"),
])
def test_a_field_an_override_set_is_named_by_the_override_not_by_a_line_of_the_file(override: str,
                                                                                      expected: str) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(TINY, [override])
    assert str(info.value).startswith(f"{TINY}: {expected}"), str(info.value)


def test_a_check_across_fields_names_the_line_and_the_overrides_it_checked() -> None:
    with pytest.raises(UserError) as info:
        load_recipe(TINY, ["seed=3", "stages[2].seq_len=2048"])
    line = next(i for i, text in enumerate(TINY.read_text().splitlines(), 1) if "factor:" in text)
    assert str(info.value).startswith(f"{TINY}:{line} (with overrides 'seed=3', 'stages[2].seq_len=2048'): "
                                      "train.stages[2].rope.factor: 4.0 x original length 256 covers 1024"), info.value


def test_the_last_override_of_a_field_is_the_one_named() -> None:
    with pytest.raises(UserError) as info:
        load_recipe(TINY, ["stages[1].seq_len=300", "stages.1.seq_len=-1"])
    assert str(info.value).startswith(f"{TINY}: override 'stages.1.seq_len=-1': train.stages[1].seq_len:")
    with pytest.raises(UserError) as info:  # the field set again after its whole stage was
        load_recipe(TINY, ["stages[1].seq_len=-1", "stages[1]={seq_len: 256, max_steps: 2}", "stages.1.seq_len=-2"])
    assert str(info.value).startswith(f"{TINY}: override 'stages.1.seq_len=-2': train.stages[1].seq_len:")
    with pytest.raises(UserError) as info:  # a negative index names the stage as validation counts it
        load_recipe(TINY, ["stages[-1].seq_len=-1"])
    assert str(info.value).startswith(f"{TINY}: override 'stages[-1].seq_len=-1': train.stages[2].seq_len:")
