"""Weighted mixtures: token shares follow the weights, length upsampling raises a source's long share while its
weight holds, and a mixed stage resumes exactly (a changed mixture of the stage in progress is refused)."""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import StopAfter, assert_same_weights, final_weights, metrics, train
from toolkit.data.batches import stage_batches
from toolkit.data.tokenizer import train_tokenizer
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import TokenizerTraining
from toolkit.recipe.yaml_files import validate_as
from toolkit.report.report import build_report

WORDS = ("river", "garden", "quiet", "tower", "lake", "bridge", "valley", "road", "field", "market")
SHARE_TOLERANCE = 0.01
"""Token shares over 2,000 rows of 64 tokens are within one percentage point of the weights."""
UPSAMPLE_TOLERANCE = 0.1
"""The long:short token ratio rises by the upsampling factor within 10% (seeded thinning of short documents)."""


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0)


def _texts(seed: int, count: int, words: tuple[int, int]) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(count)]


def _jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def _drawn(spec: DataSpec, tokenizer, rows: int, seq_len: int = 64, seed: int = 0) -> dict[str, int]:
    batches = stage_batches(spec, tokenizer, seq_len=seq_len, batch_size=50, seed=seed)
    for _ in islice(batches, rows // 50):
        pass
    return dict(zip(batches.rows.names, batches.tokens, strict=True))


def _shares(tokens: dict[str, int]) -> dict[str, float]:
    total = sum(tokens.values())
    return {name: count / total for name, count in tokens.items()}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, tokenizer) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("corpora")
    return {"short": _jsonl(folder / "short.jsonl", _texts(0, 300, (2, 8))),
            "long": _jsonl(folder / "long.jsonl", _texts(1, 60, (40, 120))),
            "mixed": _jsonl(folder / "mixed.jsonl", _texts(2, 200, (2, 8)) + _texts(3, 40, (60, 100)))}


@pytest.mark.parametrize("packing", ["pack", "split", "pad"])
def test_token_shares_follow_the_weights(tokenizer, corpora, packing: str):
    """The shares of the tokens trained on, also where rows keep a document's first ``seq_len`` tokens alone."""
    spec = DataSpec(packing=packing, mixture=[
        {"name": "short", "source": "jsonl", "path": corpora["short"], "weight": 5},
        {"name": "long", "source": "jsonl", "path": corpora["long"], "weight": 3},
        {"name": "needles", "source": "synthetic", "loss_on": "all", "weight": 2}])
    shares = _shares(_drawn(spec, tokenizer, rows=2000))
    for name, weight in {"short": 0.5, "long": 0.3, "needles": 0.2}.items():
        assert shares[name] == pytest.approx(weight, abs=SHARE_TOLERANCE), shares
    first, again = (next(stage_batches(spec, tokenizer, 64, 4, seed=0)) for _ in range(2))
    assert all(torch.equal(first[key], again[key]) for key in ("input_ids", "labels", "position_ids"))  # the seed's


def _long_to_short(tokenizer, path: str, upsample: dict | None, rows: int) -> float:
    """Tokens of documents of >= 40 tokens over the rest, counted on the documents a source draws."""
    from toolkit.data.sources import text_documents

    spec = DataSpec(source="jsonl", path=path, **({"upsample": upsample} if upsample else {}))
    long = short = 0
    for doc in islice(text_documents(spec, tokenizer, seed=0), rows):
        if len(doc.input_ids) >= 40:
            long += len(doc.input_ids)
        else:
            short += len(doc.input_ids)
    return long / short


def test_upsampling_raises_the_long_share_by_its_factor(tokenizer, corpora):
    plain = _long_to_short(tokenizer, corpora["mixed"], None, rows=4000)
    upsampled = _long_to_short(tokenizer, corpora["mixed"], {"min_tokens": 40, "factor": 3.0}, rows=4000)
    assert upsampled / plain == pytest.approx(3.0, rel=UPSAMPLE_TOLERANCE), (plain, upsampled)


def test_upsampling_keeps_the_source_weight(tokenizer, corpora):
    def mixture(upsample: dict | None) -> DataSpec:
        mixed = {"name": "mixed", "source": "jsonl", "path": corpora["mixed"], "weight": 1}
        return DataSpec(mixture=[dict(mixed, **({"upsample": upsample} if upsample else {})),
                                 {"name": "short", "source": "jsonl", "path": corpora["short"], "weight": 3}])

    for upsample in (None, {"min_tokens": 40, "factor": 3.0}):
        shares = _shares(_drawn(mixture(upsample), tokenizer, rows=2000))
        assert shares["mixed"] == pytest.approx(0.25, abs=SHARE_TOLERANCE), (upsample, shares)


def test_mixture_schema_errors_name_the_field():
    mixture = [{"source": "jsonl", "path": "a.jsonl", "weight": 1}, {"source": "jsonl", "path": "a.jsonl", "weight": 1}]
    cases: list[tuple[dict[str, Any], str]] = [
             ({"source": "jsonl", "path": "x.jsonl", "mixture": [{"weight": 1}]},
              "path: set it inside each mixture entry"),
             ({"mixture": mixture}, r"mixture\[1\]\.name: 'a\.jsonl' names mixture\[0\] too"),
             ({"mixture": [{"source": "jsonl", "weight": 1}]}, r"mixture\[0\]\.path: source 'jsonl' needs a path"),
             ({"mixture": [{"weight": 0}]}, r"mixture\[0\]\.weight: Input should be greater than 0"),
             ({"mixture": [{"source": "jsonl", "path": "a", "weight": 1, "upsample": {"min_tokens": 9, "factor": 1}}]},
              r"mixture\[0\]\.upsample\.factor: Input should be greater than 1"),
             ({"min_tokens": 5, "mixture": mixture}, "min_tokens: set it inside each mixture entry"),
             ({"path": "a.jsonl", "bad_rows": "skip"},  # no source: would read synthetic needles
              r"path: applies to file and hub sources, not synthetic \(name one with source:\)"),
             ({"mixture": [{"path": "a.jsonl", "weight": 1}]}, r"mixture\[0\]\.path: applies to file and hub"),
             ({"source": "jsonl", "path": "a.jsonl", "task": "multikey"}, "task: applies to source: synthetic, not "),
             ({"source": "text", "path": "a.txt", "loss_on": "all"}, "loss_on: applies to source: synthetic, not text")]
    for data, message in cases:
        with pytest.raises(Exception, match=f"^r.yaml: {message}"):
            validate_as(DataSpec, data, "r.yaml")


MIXED = {"packing": "pack", "mixture": [
    {"name": "needles", "source": "synthetic", "task": "passkey", "loss_on": "all", "weight": 2},
    {"name": "prose", "source": "jsonl", "path": "prose.jsonl", "weight": 1}]}


def _mixed_recipe(folder: Path, run: Path, prose: Path | None = None) -> Path:
    """The micro recipe with a two-source mixture; ``prose``: the path of a run's data (resume must see it)."""
    if prose is None:
        _jsonl(folder / "prose.jsonl", _texts(4, 40, (5, 60)))
    data = json.loads(json.dumps(MIXED))
    data["mixture"][1]["path"] = str(prose or "prose.jsonl")
    recipe = dict(MICRO_RECIPE, output={"dir": str(run)})
    recipe["train"] = dict(MICRO_RECIPE["train"], data=data)
    return write_recipe(folder, recipe)


@pytest.fixture(scope="module")
def mixed_reference(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed-reference")
    assert train(_mixed_recipe(folder, folder / "run"), "train.save_every=2") == 0
    return folder / "run"


def _stop_after(monkeypatch, steps: int) -> None:
    import toolkit.runner

    @contextmanager
    def fake_signals():
        yield StopAfter(steps)

    monkeypatch.setattr(toolkit.runner, "stop_on_signals", fake_signals)


def test_mixed_stage_resumes_exactly(tmp_path, mixed_reference, monkeypatch, capsys):
    recipe = _mixed_recipe(tmp_path, tmp_path / "run")
    _stop_after(monkeypatch, 3)  # inside stage 0, after the checkpoint at step 2 and one more step
    assert train(recipe, "train.save_every=2") == 143
    monkeypatch.undo()
    assert train(recipe, "train.save_every=2", "train.resume=true") == 0
    ours, reference = metrics(tmp_path / "run"), metrics(mixed_reference)
    assert [r["global_step"] for r in ours] == [r["global_step"] for r in reference] == list(range(1, 11))
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in reference], abs=1e-6)
    assert [r["source_tokens"] for r in ours] == [r["source_tokens"] for r in reference]
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(mixed_reference))
    short, long = reference[5], reference[-1]  # the last step of each stage: counts since the stage began
    assert sum(short["source_tokens"].values()) <= 6 * 4 * 64 and sum(long["source_tokens"].values()) <= 4 * 4 * 128
    for last in (short, long):
        assert _shares(last["source_tokens"])["needles"] == pytest.approx(2 / 3, abs=0.1)
        assert last["source_weights"] == {"needles": pytest.approx(2 / 3), "prose": pytest.approx(1 / 3)}


def test_changed_mixture_of_the_stage_in_progress_is_refused(tmp_path, mixed_reference, capsys):
    shutil.copytree(mixed_reference, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "stage-1-step-000004")
    recipe = _mixed_recipe(tmp_path, tmp_path / "run", prose=mixed_reference.parent / "prose.jsonl")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "stage-1-step-000002"
    assert train(recipe, "train.resume=true", "train.data.mixture[1].weight=2") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    # stage 0 (finished) read the same mixture: the run's record refuses it first, as the checkpoint's data check would
    assert len(err) == 1 and err[0].startswith("error: train.data.mixture[1].weight (recorded 1.0, now 2.0): not as "
                                               f"in {tmp_path / 'run' / 'recipe.resolved.yaml'}"), err


def test_report_shows_tokens_next_to_weights(mixed_reference):
    build_report(mixed_reference)
    report = (mixed_reference / "report.md").read_text()
    assert "## Data" in report
    last = metrics(mixed_reference)[-1]["source_tokens"]
    share = last["needles"] / sum(last.values())
    assert f"| long | needles | 0.667 | {last['needles']:,} | {share:.3f} | 0 |" in report
