"""The model card: Hub metadata (model-index eval results, base model, library, tags) from a run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from tests.hub_runs import FINAL_SCORES, FINAL_TAG, write_run
from toolkit.errors import UserError
from toolkit.hub.card import build_card, final_eval, is_hub_id
from toolkit.run_folder import load_run


def _data(card: ModelCard) -> ModelCardData:
    assert isinstance(card.data, ModelCardData)
    return card.data


def _results(card: ModelCard) -> list[EvalResult]:
    results = _data(card).eval_results
    assert results is not None
    return results


def _metrics(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.dataset_type, r.metric_type): r.metric_value for r in _results(card)}


def test_card_round_trips_with_the_final_stage_numbers(tmp_path: Path) -> None:
    run = write_run(tmp_path, "lora")
    path = tmp_path / "README.md"
    build_card(run, "me/tiny-long").save(path)
    card = ModelCard.load(path)

    metrics = _metrics(card)
    assert metrics[("passkey", "accuracy")] == FINAL_SCORES["niah_mean"]
    assert metrics[("ruler_mini", "effective_length")] == FINAL_SCORES["effective_length"]
    assert metrics[("ruler_mini", "accuracy")] == FINAL_SCORES["ruler_score"]
    for length, score in FINAL_SCORES["ruler_by_length"].items():
        assert metrics[("ruler_mini", f"accuracy@{length}")] == score
    assert metrics[("arc_local", "acc")] == FINAL_SCORES["arc_acc"]
    assert not any("stderr" in (r.metric_name or "") for r in _results(card))
    assert _data(card).model_name == "tiny-long"
    assert _data(card).base_model is None  # a random init is no Hub model
    assert _data(card).library_name == "peft"
    assert {"long-context", "rope", "llama-3", "lora", "rope-yarn"} <= set(_data(card).tags or [])
    assert _data(card).datasets == ["org/long-texts"]
    assert '"rope_type": "yarn"' in card.text and "max_position_embeddings = 256" in card.text
    assert "| 1 | long | 256 | yarn |" in card.text
    assert "[report.md](report.md)" in card.text
    assert f"eval tag `{FINAL_TAG}`" in card.text


def test_the_card_compares_with_the_model_before_extension_as_the_report_does(tmp_path: Path) -> None:
    """Without an evaluation of the starting model (``eval.before: false``), the last stage trained within the native
    length is what the final model is compared with, in the card as in the report."""
    run = write_run(tmp_path)
    assert "against the model before context extension (eval tag `base`)" in build_card(run, "me/x").text
    shutil.rmtree(run / "eval" / "base")
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "native_length": 128}))
    text = build_card(run, "me/x").text
    assert "against the model before context extension (eval tag `stage-0-short`)" in text
    row = next(line for line in text.splitlines() if line.startswith("| long | passkey |"))
    assert row.split(" | ")[3] != "-"  # the stage's score, not a missing base
    info["stages"] = info["stages"][:1]  # one stage within the native length: nothing before extension
    (run / "run_info.json").write_text(json.dumps({**info, "native_length": 128}))
    shutil.rmtree(run / "eval" / "stage-0-short")
    shutil.copytree(run / "eval" / FINAL_TAG, run / "eval" / "stage-0-short")
    shutil.rmtree(run / "eval" / FINAL_TAG)
    assert "against no earlier evaluation" in build_card(run, "me/x").text


def test_full_run_from_hub_model(tmp_path: Path) -> None:
    run = write_run(tmp_path, "full")
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "base_model": "meta-llama/Meta-Llama-3-8B"}))
    card = ModelCard(str(build_card(run, "org/llama-3-8b-64k")))
    assert _data(card).base_model == "meta-llama/Meta-Llama-3-8B"
    assert _data(card).library_name == "transformers"
    assert "full-finetune" in (_data(card).tags or [])
    assert "AutoModelForCausalLM.from_pretrained(\"org/llama-3-8b-64k\")" in card.text


def test_final_eval_picks_the_last_stage_not_the_lexically_last(tmp_path: Path) -> None:
    run = write_run(tmp_path, "full")
    (run / "eval" / "stage-10-longer").mkdir()
    (run / "eval" / "stage-10-longer" / "long.json").write_text(json.dumps({"suite": "long", "tasks": {
        "passkey": {"type": "niah", "score": 0.25, "mean": 0.25, "grid": {}}}}))
    tag, suites = final_eval(load_run(run))
    assert tag == "stage-10-longer"
    assert suites["long"]["tasks"]["passkey"]["mean"] == 0.25


def test_card_without_stage_evals(tmp_path: Path) -> None:
    run = write_run(tmp_path, "full")
    for tag in ("stage-0-short", FINAL_TAG):
        for path in (run / "eval" / tag).iterdir():
            path.unlink()
        (run / "eval" / tag).rmdir()
    card = ModelCard(str(build_card(run, "me/x")))
    assert _data(card).eval_results is None
    assert "No stage evaluation was recorded" in card.text


def test_missing_run_info_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run_info.json: not found"):
        build_card(tmp_path, "me/x")


@pytest.mark.parametrize(("name", "expected"), [
    ("meta-llama/Meta-Llama-3-8B", True), ("random init from model.init_config", False), ("/models/llama", False),
    (None, False)])
def test_is_hub_id(name: str | None, expected: bool) -> None:
    assert is_hub_id(name) is expected
