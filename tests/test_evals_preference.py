"""The preference model call and prediction on the real small model (untrained for the task): label-token
probabilities as the model's own next-token logits give them, the same in a padded batch as alone, and both orders
averaged so that a swapped comparison gets exactly the swapped probabilities."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.real_model import SMALL_MODEL, needs_small_model
from toolkit.data.arena import read_arena
from toolkit.data.arena_prompt import arena_input, label_token_ids
from toolkit.errors import UserError
from toolkit.evals.preference_model import predict_rows
from toolkit.evals.preference_stats import unswapped
from toolkit.evals.scoring import label_probs
from toolkit.preference.predict import write_submission
from toolkit.recipe.data_spec import ARENA_LABELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SMALL_MODEL, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(SMALL_MODEL)


@needs_small_model
def test_label_probs_are_the_next_token_softmax_over_the_labels(small) -> None:
    model, tokenizer = small
    rows = read_arena(ROOT / "data" / "arena-example" / "test.csv")[0][:3]
    prompts = [arena_input(row, tokenizer, tokenizer.chat_template, 256).ids for row in rows]
    ids = label_token_ids(tokenizer, ARENA_LABELS)
    batch = label_probs(model, prompts, ids, tokenizer.eos_token_id)
    for prompt, probs in zip(prompts, batch, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1, list(ids)]
        assert probs == pytest.approx(logits.softmax(-1).tolist(), abs=1e-5)  # padded in a batch = alone
        assert sum(probs) == pytest.approx(1.0)


@needs_small_model
def test_both_orders_averaged_are_swap_symmetric(small) -> None:
    model, tokenizer = small
    rows = read_arena(ROOT / "data" / "arena-example" / "test.csv")[0][:4]
    given = predict_rows(model, tokenizer, rows, ARENA_LABELS, 256, batch_size=3)
    swapped = predict_rows(model, tokenizer, [row.swapped() for row in rows], ARENA_LABELS, 256, batch_size=3)
    assert (given.inputs, given.cut_inputs, given.cut_tokens) == (8, 0, 0)
    for p, q in zip(given.averaged, swapped.averaged, strict=True):
        assert p == pytest.approx(unswapped(q), abs=1e-5)
    for p, q in zip(given.probs, swapped.swapped, strict=True):  # the same prompts, asked in the other run
        assert p == pytest.approx(q, abs=1e-5)
    short = predict_rows(model, tokenizer, rows, ARENA_LABELS, 60, batch_size=3)
    assert short.cut_inputs > 0 and short.cut_tokens > 0


def test_submission_is_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    write_submission(out, ["7", "8"], [(0.2, 0.3, 0.5), (1.0, 1.0, 2.0)])
    assert out.read_text().splitlines() == ["id,winner_model_a,winner_model_b,winner_tie",
                                            "7,0.200000,0.300000,0.500000", "8,0.250000,0.250000,0.500000"]
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
    with pytest.raises(UserError, match=r"--out: .* is a folder; name a \.csv file"):
        write_submission(tmp_path, ["7"], [(0.2, 0.3, 0.5)])
    with pytest.raises(UserError, match=r"--out: .*submission\.json would hold a CSV submission under another name"):
        write_submission(tmp_path / "submission.json", ["7"], [(0.2, 0.3, 0.5)])
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_an_earlier_submission_is_replaced_and_said_so_and_no_other_file(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "submission.csv"
    write_submission(out, ["7"], [(0.2, 0.3, 0.5)])
    with caplog.at_level("INFO", logger="toolkit.preference.predict"):
        write_submission(out, ["9"], [(0.5, 0.25, 0.25)])
    assert f"replacing {out} (an earlier submission)" in caplog.messages
    assert out.read_text().splitlines()[1:] == ["9,0.500000,0.250000,0.250000"]
    for kept in ("id,winner_model_a,winner_model_b\n7,0.5,0.5\n", "id,winner_model_a,winner_model_b,winner_tie,x\n",
                 "", "\x00\xff binary"):
        out.write_text(kept, encoding="latin-1")
        with pytest.raises(UserError, match=r"exists and is no submission \(its first line is not "):
            write_submission(out, ["7"], [(0.2, 0.3, 0.5)])
        assert out.read_text(encoding="latin-1") == kept
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_results_on_an_edited_held_out_file_are_not_reused(tmp_path: Path) -> None:
    """The held-out file's content is part of what recorded results are reused for (the shipped one was rewritten)."""
    import shutil

    from toolkit.evals.preference import PreferenceTask
    from toolkit.evals.results import SuiteResults

    data = Path(shutil.copy(Path(__file__).resolve().parents[1] / "data" / "arena-example" / "test.csv", tmp_path))
    task = PreferenceTask(type="preference", data=str(data))
    path = tmp_path / "s.json"
    SuiteResults(path, "s", "t", "m", "f").record(task, summary={"score": 0.5})
    assert SuiteResults(path, "s", "t", "m", "f").finished(task) is not None
    data.write_text("\n".join(data.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
    assert SuiteResults(path, "s", "t", "m", "f").finished(task) is None


def test_held_out_rows_without_labels_stop_the_suite_before_any_model(tmp_path: Path) -> None:
    """A held-out file without the winner columns (a competition test file) was found after the run had trained."""
    from toolkit.data.arena import write_arena
    from toolkit.evals.suite import load_suite

    rows = read_arena(ROOT / "data" / "arena-example" / "test.csv")[0][:2]
    unlabelled = write_arena([dataclasses.replace(row, winner=None) for row in rows], tmp_path / "unlabelled.csv")
    suite = tmp_path / "pref.yaml"
    suite.write_text(f"name: pref\ntasks:\n  - {{type: preference, data: {unlabelled}}}\n")
    with pytest.raises(UserError, match=r"tasks\[0\]\.data: .*unlabelled\.csv has no winner columns"):
        load_suite(suite)
