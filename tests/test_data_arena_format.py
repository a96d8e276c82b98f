"""The ``arena`` record format: the layout, the per-part truncation, the one label at the answer position, swap
augmentation, and the recipe checks of an arena run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.real_model import SMALL_MODEL, needs_small_model
from toolkit.data.arena import ArenaRow
from toolkit.data.arena_prompt import NoRoom, arena_input, check_room, label_token_ids, share_budget, swaps
from toolkit.data.formats import chat_template, choice_token_ids, to_document
from toolkit.data.packing import IGNORE_INDEX
from toolkit.errors import UserError
from toolkit.recipe.data_spec import SourceSpec
from toolkit.recipe.loading import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_share_budget_gives_short_parts_all_and_splits_the_rest() -> None:
    assert share_budget([5, 100, 50], 200) == [5, 100, 50]  # fits: nothing cut
    assert share_budget([5, 100, 50], 60) == [5, 28, 27]  # 55 left over 2 long parts: 27 each, 1 spare to the longest
    assert share_budget([10, 10, 10], 7) == [3, 2, 2]
    assert sum(share_budget([3, 900, 40, 41, 7], 100)) == 100


@pytest.fixture(scope="module")
def tokenizer():
    """The real model's tokenizer; every test taking it is marked ``needs_small_model`` (which skips outside CI
    without the model, and lets a CI run without it fail)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMALL_MODEL)


ROW = ArenaRow("7", "m1", "m2", ("What is 2+2?",), ("It is 4.",), ("word " * 300,), 0, "f.csv:2")


@needs_small_model
@pytest.mark.parametrize("chat", [True, False])
def test_long_parts_keep_head_and_tail(tokenizer, chat: bool) -> None:
    template = tokenizer.chat_template if chat else None
    whole = arena_input(ROW, tokenizer, template, 10_000)
    assert whole.cut == 0
    cut = arena_input(ROW, tokenizer, template, 120)
    assert len(cut.ids) == 119  # the answer token makes 120
    assert cut.cut == len(whole.ids) - len(cut.ids)
    text = tokenizer.decode(cut.ids)
    assert "What is 2+2?" in text and "It is 4." in text  # short parts whole
    assert text.count("word") < 300 and "## Response B 1\nword" in text  # the long one's head ...
    assert text.rstrip().endswith("assistant") if chat else text.endswith("word \nAnswer:\n")  # ... and tail
    with pytest.raises(UserError, match="truncate_tokens: 20 leaves no room for the comparison in f.csv:2"):
        arena_input(ROW, tokenizer, template, 20)


@needs_small_model
@pytest.mark.parametrize("chat", [True, False])
def test_room_is_checked_before_a_model_as_the_layout_finds_it(tokenizer, chat: bool) -> None:
    """``check_room`` (the layout tokenised once per number of turns, no part) refuses exactly the limits that
    ``arena_input`` refuses, for one- and two-turn comparisons, naming the field it is given."""
    template = tokenizer.chat_template if chat else None
    two_turns = ArenaRow("8", "m1", "m2", ("Hi", "And 3+3?"), ("Hello", "6"), ("Hey", "Six."), 1, "f.csv:3")
    for row in (ROW, two_turns):
        smallest = next(n for n in range(1, 400) if _fits(row, tokenizer, template, n))
        check_room([ROW, row], tokenizer, template, max(smallest, 120))
        with pytest.raises(NoRoom, match=rf"^--max-tokens: {smallest - 1} leaves no room for the comparison in "
                                         rf"{row.where} "):
            check_room([row], tokenizer, template, smallest - 1, "--max-tokens")


def _fits(row: ArenaRow, tokenizer, template: str | None, max_tokens: int) -> bool:
    try:
        arena_input(row, tokenizer, template, max_tokens)
    except NoRoom:
        return False
    return True


@needs_small_model
def test_label_tokens_must_be_single_tokens(tokenizer) -> None:
    ids = label_token_ids(tokenizer, ["A", "B", "tie"])
    assert [tokenizer.decode([i]) for i in ids] == ["A", "B", "tie"] and len(set(ids)) == 3
    with pytest.raises(UserError, match=r"label_tokens: 'Tie' is 2 tokens of the tokenizer, not one"):
        label_token_ids(tokenizer, ["A", "B", "Tie"])
    with pytest.raises(UserError, match="not three different tokens"):
        label_token_ids(tokenizer, ["A", "A", "tie"])


def _record(winner: int) -> dict[str, str]:
    flags = [str(int(k == winner)) for k in range(3)]
    return {"id": "7", "model_a": "m1", "model_b": "m2", "prompt": json.dumps(["q?"]),
            "response_a": json.dumps(["first"]), "response_b": json.dumps(["second"]),
            **dict(zip(("winner_model_a", "winner_model_b", "winner_tie"), flags, strict=True))}


@needs_small_model
@pytest.mark.parametrize(("swap", "winner", "label"), [("none", 0, "A"), ("all", 0, "B"), ("all", 2, "tie")])
def test_document_has_one_label_at_the_answer(tokenizer, swap: str, winner: int, label: str) -> None:
    spec = SourceSpec(source="csv", path="x.csv", format="arena", truncate_tokens=256, swap=swap)
    doc = to_document(_record(winner), spec, tokenizer, chat_template(spec, tokenizer, "train.data"))
    assert doc is not None
    assert doc.labels[:-1] == [IGNORE_INDEX] * (len(doc.labels) - 1)
    assert tokenizer.decode([doc.labels[-1]]) == label == tokenizer.decode([doc.input_ids[-1]])
    text = tokenizer.decode(doc.input_ids)
    first, second = ("first", "second") if swap == "none" else ("second", "first")
    assert f"## Response A 1\n{first}" in text and f"## Response B 1\n{second}" in text


@needs_small_model
def test_a_comparison_whose_layout_leaves_no_room_is_a_bad_row(tokenizer, tmp_path: Path) -> None:
    """Each turn adds fixed text: a comparison of many turns may not fit where others do; it is a bad row named by
    its file and line (skipped under ``bad_rows: skip``), not a stop without a place."""
    import csv
    from itertools import islice

    from toolkit.data.sources import text_documents

    many = {**_record(0), "id": "8", **{key: json.dumps(["x"] * 30) for key in ("prompt", "response_a", "response_b")}}
    path = tmp_path / "arena.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_record(0)))
        writer.writeheader()
        writer.writerows([_record(0), many, _record(1)])
    spec = SourceSpec(source="csv", path=str(path), format="arena", truncate_tokens=256, shuffle=False)
    with pytest.raises(UserError, match=r"^train\.data\.truncate_tokens: 256 leaves no room for the comparison \(its "
                                        rf"layout alone takes \d+ tokens\) in {path}:3$"):
        list(islice(text_documents(spec, tokenizer, 0), 2))
    skipping = spec.model_copy(update={"bad_rows": "skip"})
    assert len(list(islice(text_documents(skipping, tokenizer, 0), 4))) == 4  # the other two rows, twice


def test_half_swaps_a_fixed_half() -> None:
    chosen = [swaps(ArenaRow(str(i), "", "", ("q",), ("a",), ("b",), 0, ""), "half") for i in range(400)]
    assert 160 < sum(chosen) < 240
    assert chosen == [swaps(ArenaRow(str(i), "", "", ("q",), ("a",), ("b",), 0, ""), "half") for i in range(400)]


def _recipe(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "smollm2-135m-arena.yaml").read_text())
    data["train"]["data"]["path"] = str(ROOT / "data" / "arena-example" / "train.csv")
    data["eval"]["suites"] = []
    edit(data)
    path = tmp_path / "mutated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["train"]["data"].pop("truncate_tokens"), "train.data.truncate_tokens: format: arena needs"),
    (lambda d: d["train"]["data"].update(truncate_tokens=4096), "train.data.truncate_tokens: 4096 is longer than "
                                                                "stages[0].seq_len 256"),
    (lambda d: d["train"]["data"].update(format="text"), "train.data.swap: applies to format: arena"),
    (lambda d: d["train"]["stages"].append({"seq_len": 512, "max_steps": 1, "data": {"source": "synthetic"}}),
     "train.stages[1].data.format: text beside format: arena sources"),
])
def test_recipe_checks_of_an_arena_run(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(_recipe(tmp_path, edit))


@needs_small_model
def test_the_objective_gets_the_label_token_ids(tokenizer) -> None:
    """The ids of the recipe's label tokens, each a token of the tokenizer's vocabulary as written."""
    recipe = load_recipe(ROOT / "recipes" / "smollm2-135m-arena.yaml")
    labels = recipe.train.choice_tokens()
    assert labels is not None
    expected = tuple(tokenizer.convert_tokens_to_ids(list(labels)))
    assert tokenizer.unk_token_id not in expected and len(set(expected)) == len(labels)
    assert choice_token_ids(recipe.train, tokenizer) == expected
    assert choice_token_ids(load_recipe(ROOT / "recipes" / "tiny-passkey.yaml").train, tokenizer) is None


@needs_small_model
def test_cut_comparisons_are_counted_and_logged(tokenizer, caplog) -> None:
    from toolkit.data.formats import TRUNCATIONS

    record = {**_record(0), "response_b": json.dumps(["word " * 200])}
    spec = SourceSpec(source="csv", path="x.csv", format="arena", truncate_tokens=100)
    before = (TRUNCATIONS.rows, TRUNCATIONS.cut_rows, TRUNCATIONS.cut_tokens)
    with caplog.at_level("INFO", logger="toolkit.data.formats"):
        doc = to_document(record, spec, tokenizer, chat_template(spec, tokenizer, "train.data"))
    assert doc is not None and len(doc.input_ids) == 100
    assert (TRUNCATIONS.rows - before[0], TRUNCATIONS.cut_rows - before[1]) == (1, 1)
    assert TRUNCATIONS.cut_tokens - before[2] > 100
    if TRUNCATIONS.cut_rows & (TRUNCATIONS.cut_rows - 1) == 0:
        assert "comparisons read so far were cut to truncate_tokens 100" in caplog.text
