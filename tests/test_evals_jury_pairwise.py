"""The pairwise jury: its prompt, parsing, pooling and kappa interval against hand-computed values, the summary
of hand-made votes, a run against the loopback server (failed and mumbling judges, resume, the prior), suite
validation, the report's table, and the real small model as a local judge."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.arena_fixture import TEST_ROWS, shown_winners, train_rows
from tests.fake_judge import arena_script, serving
from tests.real_model import SMALL_MODEL, needs_small_model
from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.data.arena import ArenaRow, read_arena, write_arena
from toolkit.errors import UserError
from toolkit.evals.agreement import cohen_kappa, kappa_with_interval
from toolkit.evals.context import EvalContext
from toolkit.evals.jury_pairwise import JuryPairwiseTask, run_jury_pairwise
from toolkit.evals.jury_pairwise_panel import VERDICTS, pairwise_prompt, parse_preference, pool
from toolkit.evals.jury_pairwise_scores import pairwise_summary
from toolkit.evals.jury_pairwise_table import table_row
from toolkit.evals.jury_spec import JudgeSpec
from toolkit.evals.local_judge import LocalJudge
from toolkit.evals.preference_stats import most_probable
from toolkit.evals.results import SuiteResults
from toolkit.evals.suite import load_suite
from toolkit.evals.transformers_backend import TransformersBackend

ROW = ArenaRow("r", "m1", "m2", ("Hi?", "Bye?"), ("Hello.", "Goodbye."), ("Hey.", ""), 0, "f.csv:2")


# --- prompt, parsing, pooling, kappa ----------------------------------------------------------------------------

def test_prompt_shows_every_turn_and_swapping_exchanges_the_answers() -> None:
    prompt = pairwise_prompt(ROW)
    assert prompt.endswith("=== Turn 1 ===\n[User]\nHi?\n\n[Assistant A]\nHello.\n\n[Assistant B]\nHey.\n\n"
                           "=== Turn 2 ===\n[User]\nBye?\n\n[Assistant A]\nGoodbye.\n\n[Assistant B]\n")
    assert 'Reply with exactly one word: "A", "B" or "tie".' in prompt
    assert pairwise_prompt(ROW.swapped()).endswith("[Assistant A]\n\n\n[Assistant B]\nGoodbye.")


@pytest.mark.parametrize(("text", "verdict"), [
    ("A", 0), ("B.", 1), ("tie", 2), ("Tie.", 2), ("**B**", 1), ("[[A]]", 0), ("Assistant B is better.", 1),
    ("It is a tie.", 2), ("A tie: both are right.", 2), ("Answer: A", 0), ("Both are fine", None),
    ("a", None), ("", None), ("I prefer B over A", 1)])
def test_parse_preference(text: str, verdict: int | None) -> None:
    assert parse_preference(text) == verdict


def test_pool_smooths_vote_shares() -> None:
    assert pool([0, 0, 1], 1.0) == pytest.approx((3 / 6, 2 / 6, 1 / 6))  # (2 + 1, 1 + 1, 0 + 1) / (3 + 3)
    assert pool([2, 2], 0.5) == pytest.approx((0.5 / 3.5, 0.5 / 3.5, 2.5 / 3.5))
    assert pool([], 1.0) == pytest.approx((1 / 3, 1 / 3, 1 / 3))  # no valid vote: uniform
    assert most_probable((0.4, 0.4, 0.2)) == 0 and most_probable((0.2, 0.3, 0.3)) == 1


def test_kappa_interval() -> None:
    # 3 classes, 60 items: 40 agreements (p_o = 2/3); both raters 20/20/20 -> p_e = 1/3 -> kappa = 1/2
    a = [i % 3 for i in range(60)]
    b = [x if i < 40 else (x + 1) % 3 for i, x in enumerate(a)]
    kappa = kappa_with_interval(a, b, (0, 1, 2))
    assert kappa.value == pytest.approx(0.5) == cohen_kappa(a, b, (0, 1, 2)) and kappa.n == 60
    # the bootstrap's half-width near the large-sample one: 1.96 sqrt(p_o (1 - p_o) / n) / (1 - p_e) = 0.179
    low, high = kappa.ci or (0.0, 0.0)
    assert low < 0.5 < high and (high - low) / 2 == pytest.approx(1.96 * math.sqrt(2 / 9 / 60) / (2 / 3), rel=0.2)
    assert kappa_with_interval(a, a, (0, 1, 2)).ci == pytest.approx((1.0, 1.0))
    assert kappa_with_interval([0, 0], [0, 0], (0, 1, 2)).value is None  # no expected disagreement


# --- the summary of hand-made votes -----------------------------------------------------------------------------

def _vote(verdict: int | str) -> dict[str, Any]:
    failed, unparsed = verdict == "failed", verdict == "unparsed"
    return {"verdict": None if failed or unparsed else verdict,
            "status": "failed" if failed else "unparsed" if unparsed else "ok", "attempts": 2 if failed else 1,
            "prompt_tokens": 0 if failed else 100, "completion_tokens": 0 if failed else 1, "seconds": 0.5}


def _cell(human: int, **votes: tuple[int | str, int | str]) -> dict[str, Any]:
    return {"key": "k", "id": "i", "human": human,
            "votes": {order: {name: _vote(pair[i]) for name, pair in votes.items()}
                      for i, order in enumerate(("original", "swapped"))}}


def test_summary_by_hand() -> None:
    cells = [_cell(0, x=(0, 1), y=(0, 0)),  # swapped votes exchanged back: x A, A; y A, B -> A 3, B 1
             _cell(2, x=(2, 2), y=("failed", "unparsed")),  # tie 2
             _cell(1, x=("failed", "failed"), y=("failed", "failed"))]  # unjudged: 1/3 each
    judges = [JudgeSpec(name=n, model=n, url="http://h/v1", price_input=1.0, price_output=10.0) for n in "xy"]
    summary = pairwise_summary(cells, judges, swap=True, smoothing=1.0)
    panel, x, y = summary["panel"], summary["judges"]["x"], summary["judges"]["y"]
    # panel probabilities (4/7, 2/7, 1/7), (1/5, 1/5, 3/5), (1/3, 1/3, 1/3): most probable A, tie, A
    assert (summary["score"], summary["correct"], summary["n"], panel["unjudged"]) == (pytest.approx(2 / 3), 2, 3, 1)
    assert panel["log_loss"] == pytest.approx(-(math.log(4 / 7) + math.log(3 / 5) + math.log(1 / 3)) / 3)
    # kappa of [A, tie, A] against [A, tie, B]: p_o 2/3, p_e 2/3 * 1/3 + 1/3 * 1/3 = 1/3 -> 1/2
    assert (panel["kappa"], panel["kappa_n"]) == (pytest.approx(0.5), 3)
    # ECE: bins of 4/7 (right), 3/5 (right), 1/3 (wrong): (3/7 + 2/5 + 1/3) / 3
    assert panel["ece"] == pytest.approx((3 / 7 + 2 / 5 + 1 / 3) / 3)
    # swap: row 1 original (3/5, 1/5, 1/5) against swapped (2/5, 2/5, 1/5) exchanged back -> 1/5 + 1/5 + 0;
    # rows 2 and 3 agree; mean over 9 numbers
    assert panel["swap_consistency"] == pytest.approx(2 / 45)
    # Fleiss over the two (row, order) both judges answered: [A, A], [A, B] -> (1/2 - 5/8) / (3/8)
    assert (panel["fleiss_kappa"], panel["fleiss_n"]) == (pytest.approx(-1 / 3), 2)
    # y alone: (2/5, 2/5, 1/5), then 1/3 each twice -> A, A, A: right once, kappa 0 (it always says A)
    assert (y["accuracy"], y["kappa"], y["unjudged"]) == (pytest.approx(1 / 3), pytest.approx(0.0), 2)
    assert (x["accuracy"], x["swap_consistency"]) == (pytest.approx(2 / 3), 0.0)
    # usage: x 4 answered calls, y 3 (one unparsed); failed calls cost attempts, not tokens
    assert [(s["calls"], s["failed"], s["unparsed"], s["attempts"], s["prompt_tokens"]) for s in (x, y)] == [
        (6, 2, 0, 8, 400), (6, 3, 1, 9, 300)]
    assert (panel["calls"], panel["failed"], panel["completion_tokens"]) == (12, 5, 7)
    assert panel["cost_usd"] == pytest.approx((700 * 1.0 + 7 * 10.0) / 1e6)


# --- a run against the loopback server --------------------------------------------------------------------------

def _data(tmp_path: Path) -> tuple[Path, Path]:
    return write_arena(TEST_ROWS, tmp_path / "test.csv"), write_arena(train_rows(), tmp_path / "train.csv")


def test_run_with_failing_judges_resumes_and_scores_the_prior(tmp_path: Path) -> None:
    data, train = _data(tmp_path)
    with serving(arena_script(shown_winners(TEST_ROWS))) as server:
        judges = [JudgeSpec(name=name, model=name, url=server.url, max_attempts=2, backoff_s=0.0)
                  for name in ("oracle", "down", "mumbles")]
        task = JuryPairwiseTask(type="jury_pairwise", data=str(data), judges=judges, prior_data=str(train))
        folder = tmp_path / "out"
        ctx = EvalContext(TransformersBackend(tiny_model(max_positions=512), tiny_tokenizer()), folder, "s", "tiny")
        entry = run_jury_pairwise(task, ctx, SuiteResults(folder / "s.json", "s", "t", "tiny", "fp"))
        calls = len(server.requests)
        smoother = task.model_copy(update={"smoothing": 0.5})
        again = run_jury_pairwise(smoother, ctx, SuiteResults(folder / "s.json", "s", "t", "tiny", "fp"))
        fewer = run_jury_pairwise(task.model_copy(update={"limit": 4}), ctx,
                                  SuiteResults(folder / "s.json", "s", "t", "tiny", "fp"))
    assert calls == 9 * 2 * (1 + 2 + 1) and len(server.requests) == calls  # "down" tries twice; resumed: no call
    assert (fewer["rows"], fewer["panel"]["n"], fewer["panel"]["calls"]) == (4, 4, 4 * 2 * 3)
    panel, judges_out = entry["panel"], entry["judges"]
    # only the oracle votes, twice per row: (3/5, 1/5, 1/5) on its label; s = 0.5: (2.5/3.5, ...)
    assert (panel["accuracy"], panel["kappa"], panel["swap_consistency"]) == (1.0, 1.0, 0.0)
    assert panel["log_loss"] == pytest.approx(math.log(5 / 3))
    assert again["panel"]["log_loss"] == pytest.approx(math.log(3.5 / 2.5))
    assert (judges_out["down"]["failed"], judges_out["down"]["attempts"]) == (18, 36)
    assert (judges_out["mumbles"]["unparsed"], judges_out["mumbles"]["unjudged"]) == (18, 9)
    # the prior of the training labels (1/2, 3/10, 1/5) on 4 A, 3 B and 2 ties; most probable A: accuracy 4/9
    prior = entry["prior"]
    assert prior["probs"] == pytest.approx([0.5, 0.3, 0.2]) and prior["accuracy"] == pytest.approx(4 / 9)
    assert prior["log_loss"] == pytest.approx(-(4 * math.log(0.5) + 3 * math.log(0.3) + 2 * math.log(0.2)) / 9)
    assert (entry["rows"], entry["bad_rows"], entry["complete"]) == (9, 0, True)
    raw = [json.loads(line) for line in (folder / entry["raw_outputs"]).read_text().splitlines()]
    assert len(raw) == 9 * 2 * 3 and {r["order"] for r in raw} == {"original", "swapped"}
    assert {r["output"] for r in raw if r["judge"] == "oracle"} == {"A", "B", "tie"}


# --- suite validation -------------------------------------------------------------------------------------------

def test_suite_errors(tmp_path: Path) -> None:
    data, _ = _data(tmp_path)
    suite = tmp_path / "s.yaml"
    head = "name: s\ntasks:\n  - type: jury_pairwise\n    data: test.csv\n"
    judge = "    judges:\n      - {name: a, model: m, url: 'http://h/v1'}\n"
    suite.write_text(head + judge)
    [task] = load_suite(suite).tasks
    assert isinstance(task, JuryPairwiseTask) and task.data == str(data) and task.swap
    suite.write_text(head + "    pooling: max_vote\n" + judge)
    with pytest.raises(UserError, match=r"s.yaml:5: tasks\[0\].pooling: unknown key"):
        load_suite(suite)
    suite.write_text(head + judge + "      - {name: a, model: n, url: 'http://h/v1'}\n")
    with pytest.raises(UserError, match=r"tasks\[0\].judges: names must be unique \(got a, a\)"):
        load_suite(suite)
    suite.write_text(head + judge + "    prior_data: absent.csv\n")
    with pytest.raises(UserError, match=r"tasks\[0\].prior_data: no such file"):
        load_suite(suite)
    with data.open("a", encoding="utf-8") as handle:
        handle.write('bad,model-x,model-y,[oops,"[""a""]","[""b""]",1,0,0\n')
    with pytest.raises(UserError, match=r"tasks\[0\].data: unparseable JSON in 'prompt' in .*test.csv:11"):
        load_suite(suite)
    suite.write_text(head + judge + "    bad_rows: skip\n")
    [task] = load_suite(suite).tasks
    assert isinstance(task, JuryPairwiseTask) and task.bad_rows == "skip"
    unlabelled = write_arena([replace(row, winner=None) for row in TEST_ROWS], tmp_path / "unlabelled.csv")
    assert read_arena(unlabelled)[0][0].winner is None
    suite.write_text(head.replace("test.csv", "unlabelled.csv") + judge)
    with pytest.raises(UserError, match=r"tasks\[0\].data: .*unlabelled.csv has no winner columns"):
        load_suite(suite)


# --- the report's table ------------------------------------------------------------------------------------------

def test_table_row() -> None:
    scores = {"n": 9, "log_loss": 0.5, "log_loss_ci": [0.25, 0.75], "accuracy": 1.0, "accuracy_ci": [0.7, 1.0],
              "ece": 0.46, "kappa": 1.0, "kappa_ci": [1.0, 1.0], "swap_consistency": 2 / 15, "prompt_tokens": 5400,
              "completion_tokens": 18, "cost_usd": 820.8e-6}
    assert table_row("jury", scores) == ["jury", "9", "0.500 [0.250, 0.750]", "1.000 [0.700, 1.000]", "0.460",
                                         "1.000 [1.000, 1.000]", "0.133", "5400/18", "$0.0008"]
    assert table_row("prior", {"n": 9, "log_loss": 1.0, "kappa": None})[1:] == ["9", "1.000", "-", "-", "-", "-",
                                                                                 "-", "-"]


def test_the_model_card_leaves_the_judges_out() -> None:
    from toolkit.evals.registry import card_detail, card_metrics

    entry = {"type": "jury_pairwise", "score": 1.0, "n": 9, "correct": 9}
    assert card_metrics("jury_pairwise", entry) == {}  # the judges' accuracy, not the evaluated model's
    assert card_detail(entry) == "the judges' accuracy on human preferences, not this model's"


# --- the real small model as a local judge ----------------------------------------------------------------------

@needs_small_model
def test_a_choosing_judge_without_a_chat_template_compares_the_verdicts_as_it_writes_them() -> None:
    """After a plain prompt's "Verdict:" the model writes " True" (one token with its space in SmolLM2's BPE), not
    "True": the spaced tokens are compared; in its chat template's answer turn, the verdicts as they are."""
    judge = LocalJudge(JudgeSpec(name="smollm2", model=str(SMALL_MODEL), choose=True), torch.device("cpu"))
    first = {text: judge.tokenizer(text, add_special_tokens=False)["input_ids"] for text in
             (" True", " False", "True", "False")}
    assert all(len(ids) == 1 for ids in first.values())
    assert judge._first_tokens(("True", "False")) == first["True"] + first["False"]
    judge.tokenizer.chat_template = None
    assert judge._first_tokens(("True", "False")) == first[" True"] + first[" False"]


@needs_small_model
def test_local_judge_on_the_real_small_model(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    data = write_arena(TEST_ROWS[:3], tmp_path / "test.csv")
    judge = JudgeSpec(name="smollm2", model=str(SMALL_MODEL), batch_size=8, choose=True)
    task = JuryPairwiseTask(type="jury_pairwise", data=str(data), judges=[judge])
    backend = TransformersBackend(tiny_model(max_positions=512), tiny_tokenizer())
    ctx = EvalContext(backend, tmp_path / "out", "s", "tiny")
    assert ctx.device == torch.device("cpu")
    entry = run_jury_pairwise(task, ctx, SuiteResults(tmp_path / "out" / "s.json", "s", "t", "tiny", "fp"))
    stats = entry["judges"]["smollm2"]
    raw = [json.loads(line) for line in (tmp_path / "out" / entry["raw_outputs"]).read_text().splitlines()]
    # 3 rows in both orders, each one forward pass in its chat template, answered by the likeliest of A, B, tie
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    rows = read_arena(data)[0]
    prompts = [pairwise_prompt(row) for row in rows] + [pairwise_prompt(row.swapped()) for row in rows]
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    lengths = [len(tokenizer(chat, add_special_tokens=False)["input_ids"]) for chat in chats]
    assert (stats["backend"], stats["calls"], stats["failed"], stats["unparsed"], len(raw)) == ("local", 6, 0, 0, 6)
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (sum(lengths), 6)
    assert {r["output"] for r in raw} <= {"A", "B", "tie"} and stats["unjudged"] == 0
    # the panel of one is scored like any other: its two votes per row (the swapped one read back) pooled with
    # smoothing 1, the likeliest class (A before B before tie on a tie) against the row's label
    labels = {row.id: row.winner for row in rows if row.winner is not None}
    back = {"original": {"A": 0, "B": 1, "tie": 2}, "swapped": {"A": 1, "B": 0, "tie": 2}}
    pooled = {row_id: [1.0, 1.0, 1.0] for row_id in labels}
    for reply in raw:
        pooled[reply["row"]][back[reply["order"]][reply["output"]]] += 1
    right = sum(max(range(3), key=lambda c: pooled[i][c]) == labels[i] for i in labels)
    losses = [-math.log(pooled[i][labels[i]] / 5) for i in labels]
    assert stats["n"] == 3 and stats["accuracy"] == pytest.approx(right / 3)
    assert stats["log_loss"] == pytest.approx(sum(losses) / 3)


def test_a_choosing_local_judge_picks_the_likeliest_verdict(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    tiny_model(max_positions=512).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    judge = LocalJudge(JudgeSpec(name="tiny", model=str(folder), batch_size=3, choose=True), torch.device("cpu"))
    prompts = [pairwise_prompt(ROW), "Which is better?", pairwise_prompt(ROW.swapped()) + " Think twice."]
    replies = judge.ask(prompts, VERDICTS)
    # each prompt alone, unpadded: the verdict whose first token has the highest next-token logit (this tokenizer
    # writes a space as a token of its own, so the verdicts' own first tokens)
    firsts = [judge.tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in VERDICTS]
    for prompt, reply in zip(prompts, replies, strict=True):
        ids = judge._encode(prompt)
        with torch.no_grad():
            logits = judge.model(input_ids=torch.tensor([ids])).logits[0, -1, firsts]
        assert reply.text == VERDICTS[int(logits.argmax())]
        assert (reply.prompt_tokens, reply.completion_tokens, reply.error) == (len(ids), 1, None)
    assert [r.text for r in judge.ask(prompts)] != [None] * 3  # without verdicts to choose from: it generates


def test_choose_is_for_local_judges() -> None:
    with pytest.raises(ValueError, match="choose is for local judges"):
        JudgeSpec(name="a", model="m", url="http://h/v1", choose=True)
