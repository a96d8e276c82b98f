"""Loss by position: equals the model's own loss, bucketed exactly; results JSON and plot."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.evals.api import run_suites
from toolkit.evals.context import sentence_tokens
from toolkit.evals.haystack import long_document
from toolkit.evals.perplexity import bucket_losses, document_losses, loss_ratio, mean_of, perplexity_section
from toolkit.evals.scoring import token_losses
from toolkit.evals.stats import LOSS_RATIO_INTERVAL
from toolkit.formatting.blocks import Paragraph, Table
from toolkit.run_folder import Run, RunInfo


def test_token_losses_match_the_model_loss():
    model = tiny_model()
    ids = torch.randint(3, 500, (2, 200))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss
    losses = token_losses(model, ids)
    assert losses.shape == (2, 199)
    assert losses.mean().item() == pytest.approx(expected.item(), rel=1e-5)


def test_bucket_losses():
    losses = torch.arange(1, 10, dtype=torch.float).reshape(1, 9)  # positions 1..9
    assert bucket_losses([losses], 4) == {"0": 2.0, "4": 5.5, "8": 8.5}  # [1,2,3], [4..7], [8,9]
    batches = [torch.stack([losses[0], losses[0] + 1]), losses + 2]  # rows of 1..9 and 2..10, then 3..11
    assert bucket_losses(batches, 4) == {"0": 3.0, "4": 6.5, "8": 9.5}
    assert mean_of(batches) == pytest.approx(6.0)
    means, by_bucket = document_losses(batches, 4)  # three documents, in order
    assert means == pytest.approx([5.0, 6.0, 7.0]) and by_bucket[1] == {"0": 3.0, "4": 6.5, "8": 9.5}


def test_perplexity_task(tmp_path: Path):
    suite = tmp_path / "p.yaml"
    suite.write_text("name: p\ntasks:\n  - {type: perplexity, length: 256, bucket: 64, documents: 2, seed: 3}\n")
    model, tok = tiny_model(), tiny_tokenizer()
    entry = run_suites(model, tok, [str(suite)], tmp_path, "base", "tiny")["p"]["tasks"]["perplexity"]
    assert list(entry["loss_by_bucket"]) == ["0", "64", "128", "192"]
    docs = [long_document(sentence_tokens(tok), None, 256, random.Random(f"3:doc:{i}")) for i in range(2)]
    assert all(len(d) == 256 and d[0] == tok.bos_token_id for d in docs)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(docs), labels=torch.tensor(docs)).loss.item()
    assert entry["mean_loss"] == pytest.approx(expected, rel=1e-5)
    for i, doc in enumerate(docs):  # each document's own loss, as the interval of two models' perplexities needs
        with torch.no_grad():
            own = model(input_ids=torch.tensor([doc]), labels=torch.tensor([doc])).loss.item()
        assert entry["document_mean_loss"][i] == pytest.approx(own, rel=1e-5)
    assert math.fsum(entry["document_mean_loss"]) / 2 == pytest.approx(entry["mean_loss"], rel=1e-6)
    assert list(entry["document_loss_by_bucket"][1]) == ["0", "64", "128", "192"]
    assert entry["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert entry["perplexity_by_bucket"]["64"] == pytest.approx(math.exp(entry["loss_by_bucket"]["64"]))
    assert entry["score"] is None
    assert (tmp_path / "base" / "p-perplexity.png").is_file()


def _entry(documents: list[float]) -> dict:
    mean = math.fsum(documents) / len(documents)
    return {"type": "perplexity", "loss_by_bucket": {"0": mean}, "mean_loss": mean, "perplexity": math.exp(mean),
            "document_mean_loss": documents}


def test_the_report_gives_each_perplexity_against_the_one_before_extension(tmp_path: Path) -> None:
    before, after = _entry([3.0, 3.2, 2.8, 3.1]), _entry([2.9, 3.05, 2.75, 3.0])  # 0.10, 0.15, 0.05, 0.10 lower
    older = {key: value for key, value in after.items() if key != "document_mean_loss"}  # from before they were kept
    run = Run(tmp_path, None, RunInfo(), [], {tag: {"s": {"tasks": {"heldout": entry}}} for tag, entry in
                                             (("base", before), ("stage-0-long", after), ("stage-1-longer", older))})
    blocks = perplexity_section(run)
    [paragraph] = [block for block in blocks if isinstance(block, Paragraph)]
    assert paragraph.text == LOSS_RATIO_INTERVAL
    [table] = [block for block in blocks if isinstance(block, Table)]
    assert table.header == ["tag", "mean loss", "perplexity", "perplexity / base's"]
    # exp(-0.1) = 0.905; t(0.975, 3) = 3.182 x sd 0.0408 / 2 = 0.065 either side of -0.1 in loss
    assert [row[3] for row in table.rows] == ["-", "0.905 [0.848, 0.966]", "0.905"]


def test_the_ratio_from_a_position_on_weighs_its_buckets_of_each_document() -> None:
    def entry(documents: list[dict[str, float]]) -> dict:
        by_bucket = {first: math.fsum(doc[first] for doc in documents) / len(documents) for first in documents[0]}
        return {"loss_by_bucket": by_bucket, "document_loss_by_bucket": documents}

    new = entry([{"0": 9.0, "64": 2.0, "128": 2.2}, {"0": 9.0, "64": 2.4, "128": 2.0}])  # far: 2.1 and 2.2
    old = entry([{"0": 1.0, "64": 2.3, "128": 2.3}, {"0": 1.0, "64": 2.5, "128": 2.3}])  # far: 2.3 and 2.4
    ratio = loss_ratio(new, old, start=64)
    assert ratio is not None and ratio.value == pytest.approx(math.exp(-0.2))
    assert ratio.interval == pytest.approx((math.exp(-0.2), math.exp(-0.2)))  # both documents 0.2 lower: no spread
    assert loss_ratio(new, old) is None  # whole documents need their mean losses
    without = {"loss_by_bucket": old["loss_by_bucket"]}  # results from before documents' losses were kept
    pointwise = loss_ratio(new, without, start=64)
    assert pointwise is not None and pointwise.value == ratio.value and pointwise.interval is None
