"""The shipped pairwise jury suite end to end through ``python -m toolkit eval``: its two HTTP judges stand on a
loopback OpenAI-compatible server, one answering as the humans did (in the order shown) and one always "A" (pure
position bias), on the nine-row fixture; the numbers follow from those two rules by hand, then the resumed run,
the report's side-by-side table with the classifier's shipped suite run on the same rows (the tiny model), and
the API key in no file. (The local judge is tested with the real small
model in test_evals_jury_pairwise.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.arena_fixture import TEST_ROWS, shown_winners, train_rows
from tests.fake_judge import arena_script, serving
from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.cli import main
from toolkit.data.arena import write_arena
from toolkit.report import report

EVALS = Path(__file__).resolve().parents[1] / "evals"
SECRET = "sk-jury-pairwise-e2e-77a1"


def _suite(tmp_path: Path, url: str) -> Path:
    suite = yaml.safe_load((EVALS / "jury-pairwise-example.yaml").read_text())
    task = suite["tasks"][0]
    assert (task["swap"], task["smoothing"]) == (True, 1.0)
    task["data"] = str(write_arena(TEST_ROWS, tmp_path / "test.csv"))
    task["prior_data"] = str(write_arena(train_rows(), tmp_path / "train.csv"))
    judges = {judge["name"]: judge for judge in task["judges"]}
    judges["llama"].update(url=url, model="oracle")
    judges["gpt-4o-mini"].update(url=url, model="first")
    task["judges"] = [judges["llama"], judges["gpt-4o-mini"]]
    path = tmp_path / "jury-pairwise-example.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _classifier_suite(tmp_path: Path) -> Path:
    """The classifier's shipped suite on the same rows and prior; the tiny tokenizer's labels are A, B, C."""
    suite = yaml.safe_load((EVALS / "arena-example.yaml").read_text())
    suite["tasks"][0].update(data=str(tmp_path / "test.csv"), prior=str(tmp_path / "train.csv"),
                             label_tokens=["A", "B", "C"])
    path = tmp_path / "arena-example.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_shipped_pairwise_suite_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    model_dir = tmp_path / "model"  # the evaluated model plays no part in this task
    tiny_model(max_positions=512).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / "run" / "eval" / "final"
    with serving(arena_script(shown_winners(TEST_ROWS))) as server:
        jury_suite = _suite(tmp_path, server.url)
        command = ["eval", "--model", str(model_dir), "--suite", str(_classifier_suite(tmp_path)), "--suite",
                   str(jury_suite), "--out", str(out), "--device", "cpu"]
        assert main(command) == 0
        calls = len(server.requests)
        assert main(command) == 0  # resumed: every vote recorded, no judge asked again
    assert calls == 9 * 2 * 2 and len(server.requests) == calls
    entry = json.loads((out / "jury-pairwise-example.json").read_text())["tasks"]["jury_pairwise"]
    panel, oracle, first = entry["panel"], entry["judges"]["llama"], entry["judges"]["gpt-4o-mini"]
    # per row: the oracle's label twice, plus "A" shown first and (swapped back) B -> counts +1 each, over 4 + 3:
    # an A row (4/7, 2/7, 1/7), a B row (2/7, 4/7, 1/7), a tie (2/7, 2/7, 3/7); always right; 7 A/B rows, 2 ties
    assert (panel["n"], panel["accuracy"], panel["kappa"], entry["score"]) == (9, 1.0, 1.0, 1.0)
    assert panel["log_loss"] == pytest.approx((7 * math.log(7 / 4) + 2 * math.log(7 / 3)) / 9)
    assert panel["ece"] == pytest.approx((7 * (1 - 4 / 7) + 2 * (1 - 3 / 7)) / 9)
    # one order alone: oracle + "A" over 2 + 3; the other order gives the same on the other side: 2/15 every row
    assert panel["swap_consistency"] == pytest.approx(2 / 15)
    # "A" in both orders is A then B: (2/5, 2/5, 1/5) everywhere, most probable A: right on the 4 A rows, kappa 0;
    # one order alone (1/2, 1/4, 1/4) against (1/4, 1/2, 1/4) exchanged back: 1/6
    assert (first["accuracy"], first["kappa"]) == (pytest.approx(4 / 9), pytest.approx(0.0))
    assert first["swap_consistency"] == pytest.approx(1 / 6) and oracle["swap_consistency"] == 0.0
    assert (oracle["accuracy"], oracle["log_loss"]) == (1.0, pytest.approx(math.log(5 / 3)))
    # Fleiss among the two judges over 18 (row, order), votes in the row's order: they agree on A rows shown as
    # they are and B rows swapped (7 of 18); shares of 36 votes A 17, B 15, tie 4 -> P_e = 530/1296;
    # kappa = (504 - 530) / (1296 - 530) = -13/383
    assert (panel["fleiss_n"], panel["fleiss_kappa"]) == (18, pytest.approx(-13 / 383))
    # cost: 18 calls x (300 in, 1 out) at $0.15 / $0.60 per 1M; the oracle is free
    assert (first["prompt_tokens"], first["completion_tokens"]) == (5400, 18)
    assert first["cost_usd"] == pytest.approx((5400 * 0.15 + 18 * 0.60) / 1e6) and oracle["cost_usd"] == 0.0
    assert panel["cost_usd"] == first["cost_usd"] and (panel["calls"], panel["failed"]) == (36, 0)
    assert entry["prior"]["log_loss"] == pytest.approx(-(4 * math.log(0.5) + 3 * math.log(0.3) + 2 * math.log(0.2))
                                                       / 9)
    printed = capsys.readouterr()
    assert (f"jury-pairwise-example/jury_pairwise: score 1.000, panel of 2 over 9 rows: log loss "
            f"{panel['log_loss']:.3f} (prior {entry['prior']['log_loss']:.3f}), kappa 1.000, swap consistency 0.133, "
            f"0 failed, 0 unparsed of 36 judge calls, 10800/36 tokens, $0.0008") in printed.out
    report.build_report(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Human preference: classifier, jury and prior" in md
    assert (f"| jury-pairwise-example/jury_pairwise: jury panel (2 judges) | 9 | {panel['log_loss']:.3f} [" in md)
    assert "| 1.000 [0.701, 1.000] | 0.460 | 1.000 [1.000, 1.000] | 0.133 | 10800/36 | $0.0008 |" in md
    # the classifier (the tiny model's label-token probabilities) on the same rows, and the same prior
    classifier = json.loads((out / "arena-example.json").read_text())["tasks"]["heldout"]
    assert classifier["n"] == 9 and classifier["prior_log_loss"] == pytest.approx(entry["prior"]["log_loss"])
    assert (f"| arena-example/heldout: fine-tuned classifier | 9 | {classifier['log_loss']:.3f} "
            f"[{classifier['log_loss_ci'][0]:.3f}, {classifier['log_loss_ci'][1]:.3f}] |") in md
    prior = f"| 9 | {classifier['prior_log_loss']:.3f} [0.814, 1.320] | 0.444 [0.189, 0.733] | 0.056 |"
    assert f"| arena-example/heldout: class prior of the training file {prior}" in md
    assert f"| jury-pairwise-example/jury_pairwise: class prior {prior} 0.000 [0.000, 0.000] |" in md
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]
    assert SECRET not in printed.out + printed.err
