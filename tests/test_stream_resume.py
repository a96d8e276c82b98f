"""A resumed stream continues from the position a checkpoint saved: row for row what the uninterrupted stream yields
(one source, a mixture with upsampling, a synthetic source; across epochs and documents split over rows), at a cost
that does not grow with the steps already trained; a checkpoint without a position replays the stream."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch

import toolkit.data.sources
from tests.runs import assert_same_weights, final_weights, metrics, train
from toolkit.data.batches import PackedRows, stage_batches
from toolkit.data.packing import Row
from toolkit.data.stream_state import StreamState
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import RunFailure, UserError
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import TokenizerTraining

SEQ_LEN = 64
ROWS = 48
"""Rows of each uninterrupted stream; every row boundary in it is a resume point."""
AHEAD = 6
"""Rows compared after each resume point."""
WORDS = ("river", "garden", "quiet", "tower", "lake", "bridge", "valley", "road", "field", "market")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0)


def _jsonl(path: Path, records: list[Any]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def _texts(seed: int, count: int, words: tuple[int, int]) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))} for _ in range(count)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    """``short``: 10 lines, 3 of them bad (one not JSON, in the middle), many epochs in :data:`ROWS` rows; ``long``:
    documents of one to three rows; ``mixed``: short and long documents for upsampling."""
    folder = tmp_path_factory.mktemp("stream")
    short = _jsonl(folder / "short.jsonl", _texts(0, 7, (3, 20)) + [{"text": 5}, {"id": 1, "text": [1]}])
    lines = Path(short).read_text().splitlines(keepends=True)
    Path(short).write_text("".join(lines[:4] + ['{"text": "a line cut off\n'] + lines[4:]))
    return {"short": short,
            "long": _jsonl(folder / "long.jsonl", _texts(1, 6, (30, 150))),
            "mixed": _jsonl(folder / "mixed.jsonl", _texts(2, 20, (2, 8)) + _texts(3, 5, (50, 90)))}


def _specs(corpora: dict[str, str]) -> dict[str, DataSpec]:
    short = {"source": "jsonl", "path": corpora["short"], "bad_rows": "skip"}
    return {
        "short-pack": DataSpec(**short, packing="pack"),
        "long-pack": DataSpec(source="jsonl", path=corpora["long"], packing="pack"),
        "long-split": DataSpec(source="jsonl", path=corpora["long"], packing="split"),
        "long-pad": DataSpec(source="jsonl", path=corpora["long"], packing="pad"),
        "synthetic": DataSpec(source="synthetic", task="passkey", loss_on="answer", packing="pack"),
        "mixture": DataSpec(packing="pack", mixture=[
            {"name": "mixed", "source": "jsonl", "path": corpora["mixed"], "weight": 2,
             "upsample": {"min_tokens": 40, "factor": 3.0}},
            {"name": "short", **short, "weight": 1},
            {"name": "needles", "source": "synthetic", "task": "passkey", "loss_on": "all", "weight": 1}]),
    }


def _saved(state: StreamState) -> StreamState:
    """``state`` after the round trip through a checkpoint's ``trainer_state.json``."""
    return StreamState.from_json(json.loads(json.dumps(asdict(state))))


def _uninterrupted(spec: DataSpec, tokenizer) -> tuple[list[Row], list[StreamState], list[list[int]]]:
    """The first rows of the stream, its position before each, and the bad records skipped by then."""
    stream = PackedRows(spec, tokenizer, SEQ_LEN, seed=3)
    rows: list[Row] = []
    skipped = []
    for row in islice(stream, ROWS):
        rows.append(row)
        skipped.append(stream.skipped)
    return rows, [stream.position(r) for r in range(ROWS)], skipped


@pytest.mark.parametrize("case", ["short-pack", "long-pack", "long-split", "long-pad", "synthetic", "mixture"])
def test_a_stream_resumed_at_any_row_yields_the_uninterrupted_rows(case, tokenizer, corpora):
    spec = _specs(corpora)[case]
    rows, positions, skipped = _uninterrupted(spec, tokenizer)
    for r in range(ROWS - AHEAD):
        resumed = PackedRows(spec, tokenizer, SEQ_LEN, seed=3, start=_saved(positions[r]))
        again = list(islice(resumed, AHEAD))
        assert again == rows[r:r + AHEAD], f"{case}: resumed at row {r}"
        assert resumed.skipped == skipped[r + AHEAD - 1], f"{case}: bad records counted from row {r}"
        assert resumed.position(r + AHEAD) == positions[r + AHEAD]
    last = positions[-1]
    if case == "short-pack":  # many epochs, each with three bad records
        assert last.docs.sources[0].epoch >= 3 and last.docs.sources[0].skipped >= 9, last.docs.sources[0]
    if case in ("long-pack", "long-split"):  # documents longer than a row continue in the next one
        assert any(p.offset >= SEQ_LEN for p in positions), [p.offset for p in positions]
    if case == "mixture":
        assert all(last.docs.drawn) and all(last.tokens) and all(s.rng for s in last.docs.sources)
    assert sum(last.tokens) == sum(sum(s != -1 for s in row["sources"]) for row in rows[:-1])


def _counting(monkeypatch) -> dict[str, int]:
    """Count the records tokenized into documents (``to_document`` calls) from here on."""
    calls = {"n": 0}
    original = toolkit.data.sources.to_document

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(toolkit.data.sources, "to_document", counted)
    return calls


def _resume_cost(spec: DataSpec, tokenizer, consumed: int, start: StreamState | None, calls: dict[str, int]) -> int:
    """Documents tokenized to resume after ``consumed`` batches of 4 rows and draw the next batch."""
    calls["n"] = 0
    next(stage_batches(spec, tokenizer, SEQ_LEN, 4, seed=3, start=start, consumed=consumed))
    return calls["n"]


def test_resume_cost_does_not_grow_with_the_steps_trained(tokenizer, tmp_path, monkeypatch):
    """Records of 24 tokens, two to a row (a third opens the next row, so a document is in progress at every row
    boundary). Resuming after 2 or after 20 steps of 4 rows tokenizes the 8 documents of the next batch (the first of
    them, in progress at the checkpoint, again) and the one that closes its last row: the same count, one more than
    the uninterrupted stream tokenizes for that batch. Replaying tokenizes every document since the stage began."""
    text = " ".join(WORDS[:3] * 7)
    spec = DataSpec(source="jsonl", path=_jsonl(tmp_path / "same.jsonl", [{"text": text}] * 5), packing="pack")
    doc = toolkit.data.sources.to_document({"text": text}, spec, tokenizer, None)
    assert doc is not None and len(doc.input_ids) == 24
    calls = _counting(monkeypatch)
    reference = stage_batches(spec, tokenizer, SEQ_LEN, 4, seed=3)
    saved = {}
    for step in range(1, 21):
        next(reference)
        saved[step] = _saved(reference.position())
    assert {step: saved[step].offset for step in (2, 20)} == {2: 0, 20: 0} and saved[20].row == 80
    resumed = {steps: _resume_cost(spec, tokenizer, steps, saved[steps], calls) for steps in (2, 20)}
    replayed = {steps: _resume_cost(spec, tokenizer, steps, None, calls) for steps in (2, 20)}
    assert resumed == {2: 2 * 4 + 1, 20: 2 * 4 + 1}
    assert replayed == {2: 2 * 4 * 3 + 1, 20: 2 * 4 * 21 + 1}


def test_a_partly_handed_out_read_resumes_from_its_start(tokenizer, corpora):
    """Where each batch read is handed out in two (Ulysses over two ranks), a position after an odd count of batches
    is the start of the read, and the resumed stream draws the first half again and drops it."""
    spec = _specs(corpora)["long-pack"]
    reference = stage_batches(spec, tokenizer, SEQ_LEN, 2, seed=3, per_read=2)
    for _ in range(3):
        next(reference)
    assert reference.position().row == 2 * 2
    resumed = stage_batches(spec, tokenizer, SEQ_LEN, 2, seed=3, per_read=2, start=_saved(reference.position()),
                            consumed=3)
    assert resumed.count == 3
    following, expected = next(resumed), next(reference)
    assert torch.equal(following["input_ids"], expected["input_ids"])
    assert torch.equal(following["labels"], expected["labels"])
    assert resumed.logged()["source_tokens"] == reference.logged()["source_tokens"]


def test_positions_behind_the_consumed_rows_are_forgotten(tokenizer, corpora):
    batches = stage_batches(_specs(corpora)["long-pack"], tokenizer, SEQ_LEN, 2, seed=3)
    for _ in range(50):
        next(batches)
    assert batches.position().row == 100
    with pytest.raises(RunFailure, match="position at row 98 is not kept"):
        batches.rows.position(98)


def test_a_checkpoint_without_a_position_replays_the_stream(tmp_path: Path, uninterrupted: Path, capsys) -> None:
    """An older checkpoint (no ``stream`` in its trainer state) resumes by replay, to the uninterrupted result."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    shutil.rmtree(run / "final")
    kept = sorted((run / "checkpoints").iterdir())
    for later in kept[1:]:
        shutil.rmtree(later)
    state_file = kept[0] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["stage"] == 1 and state["step"] == 2 and state["stream"]["row"] == 2 * 2 * 2
    del state["stream"]
    state_file.write_text(json.dumps(state))
    recipe = uninterrupted.parent / "recipe.yaml"
    assert train(recipe, f"output.dir={run}", "train.save_every=2", "train.resume=true") == 0
    assert "replaying the 4 batches stage 1 consumed" in capsys.readouterr().out
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    assert [r["loss"] for r in metrics(run)] == pytest.approx([r["loss"] for r in metrics(uninterrupted)], abs=1e-6)


def test_a_file_that_lost_records_since_the_checkpoint_is_named(tokenizer, tmp_path):
    path = _jsonl(tmp_path / "texts.jsonl", _texts(4, 8, (30, 60)))
    spec = DataSpec(source="jsonl", path=path, packing="pack")
    stream = PackedRows(spec, tokenizer, SEQ_LEN, seed=3)
    for _ in islice(stream, 6):
        pass
    saved = _saved(stream.position(6))
    assert saved.docs.sources[0].epoch == 0 and saved.docs.sources[0].records > 2
    _jsonl(tmp_path / "texts.jsonl", _texts(4, 2, (30, 60)))
    with pytest.raises(UserError, match=r"^train\.data\.path: .*texts\.jsonl holds fewer records than the checkpoint"):
        next(iter(PackedRows(spec, tokenizer, SEQ_LEN, seed=3, start=saved)))
