"""The jury task: pooling and kappas against hand-computed values, the HTTP judge against a loopback
OpenAI-compatible server (retries, timeouts, 429 with Retry-After, 5xx, malformed answers), local judges, the
panel summary, data and suite validation, and a run that records failed judges and resumes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.fake_judge import Answer, serving
from tests.real_model import SMALL_MODEL, needs_small_model
from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.errors import UserError
from toolkit.evals.agreement import average, cohen_kappa, fleiss_kappa, max_vote
from toolkit.evals.context import EvalContext
from toolkit.evals.judges import HttpJudge, check_panel
from toolkit.evals.jury import ASK, JuryTask, answer_prompt, run_jury
from toolkit.evals.jury_panel import JUDGE_PROMPTS, jury_summary, parse_verdict
from toolkit.evals.jury_spec import JudgeSpec, JuryItem, read_items
from toolkit.evals.local_judge import LocalJudge
from toolkit.evals.results import SuiteResults
from toolkit.evals.suite import load_suite
from toolkit.evals.transformers_backend import TransformersBackend

CPU = torch.device("cpu")


# --- pooling and agreement --------------------------------------------------------------------------------------

def test_max_vote_and_average_pooling() -> None:
    assert max_vote([1, 1, 0]) == 1
    assert max_vote([0, None, 1, 1]) == 1  # 2 of the 3 valid votes
    assert max_vote([1, 0, None]) == 0  # a tie is not a majority
    assert max_vote([None, None]) is None
    assert average([4, 5, None]) == 4.5
    assert average([1, 2, 3]) == 2.0
    assert average([None]) is None


def test_fleiss_kappa_by_hand() -> None:
    # 4 answers x 3 judges, categories 0/1. Per answer P_i = (sum_j n_ij^2 - 3) / (3 * 2):
    # [1,1,1] -> (9 - 3)/6 = 1; [1,1,0] -> (4 + 1 - 3)/6 = 1/3; [0,0,0] -> 1; [1,0,0] -> 1/3; mean P = 2/3.
    # Shares: six 1s and six 0s of 12 -> P_e = 0.5^2 + 0.5^2 = 0.5. kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
    assert fleiss_kappa([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]], (0, 1)) == pytest.approx(1 / 3)
    # Fleiss (1971)'s worked example (10 subjects, 14 raters, 5 categories; counts per category): mean P = 0.378,
    # P_e = 0.213, kappa = 0.210 as published.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
              [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, n in enumerate(row, start=1) for _ in range(n)] for row in counts]
    assert fleiss_kappa(ratings, (1, 2, 3, 4, 5)) == pytest.approx(0.210, abs=5e-4)
    assert fleiss_kappa([[1, 1], [1, 1]], (0, 1)) is None  # every rating in one category: undefined
    assert fleiss_kappa([[1, 0]], (0, 1)) == pytest.approx(-1.0)  # (0 - 0.5) / 0.5
    assert fleiss_kappa([], (0, 1)) is None


def test_cohen_kappa_by_hand() -> None:
    # Unweighted: agreement on 6 of 8 -> p_o = 0.75; each rater has five 1s and three 0s ->
    # p_e = (5/8)^2 + (3/8)^2 = 34/64; kappa = (0.75 - 34/64) / (1 - 34/64) = 7/15.
    assert cohen_kappa([1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 0, 1, 1, 1, 1], (0, 1)) == pytest.approx(7 / 15)
    # Quadratic weights (i-j)^2/16 on 1-5. a = [5,4,3,2], b = [5,5,3,1]: observed = (0 + 1 + 0 + 1)/16/4 = 1/32.
    # Expected: b is 5 (1/2), 3 (1/4), 1 (1/4); E_b[(x-y)^2] for x = 5, 4, 3, 2 is 5, 3, 3, 5, mean 4 -> 4/16.
    # kappa_w = 1 - (1/32) / (1/4) = 0.875.
    assert cohen_kappa([5, 4, 3, 2], [5, 5, 3, 1], (1, 2, 3, 4, 5), quadratic=True) == pytest.approx(0.875)
    assert cohen_kappa([1, 1], [1, 1], (0, 1)) is None  # no expected disagreement
    assert cohen_kappa([], [], (0, 1)) is None


def test_parse_verdict() -> None:
    assert parse_verdict("max_vote", "True.") == 1
    assert parse_verdict("max_vote", "The answer is false; it names the wrong person.") == 0
    assert parse_verdict("max_vote", "Correct!") is None
    assert parse_verdict("average", "Rating: 4/5") == 4
    assert parse_verdict("average", "I would give it a 7") is None


# --- the panel summary ------------------------------------------------------------------------------------------

def _vote(verdict: int | str) -> dict[str, Any]:
    if verdict == "failed":
        return {"verdict": None, "status": "failed", "attempts": 3, "prompt_tokens": 0, "completion_tokens": 0,
                "seconds": 1.0}
    return {"verdict": None if verdict == "unparsed" else verdict, "status": "unparsed" if verdict == "unparsed"
            else "ok", "attempts": 1, "prompt_tokens": 100, "completion_tokens": 2, "seconds": 0.5}


def _cell(human: int | None, **votes: int | str) -> dict[str, Any]:
    return {"key": "k", "id": "i", "answer": "a", "human": human, "labelled": human is not None,
            "votes": {name: _vote(v) for name, v in votes.items()}}


def _task(pooling: str, *names: str) -> JuryTask:
    judges = [JudgeSpec(name=name, model="m", url="http://127.0.0.1:1/v1", price_input=1.0, price_output=10.0)
              for name in names]
    return JuryTask(type="jury", data="d.jsonl", judges=judges, pooling=pooling)


def test_max_vote_summary_by_hand() -> None:
    cells = [_cell(None, a=1, b=1, c=0),  # model's answers: pooled 1
             _cell(None, a=0, b=0, c=0),  # 0
             _cell(None, a=1, b="failed", c=0),  # 1 vs 0: a tie -> 0
             _cell(None, a=1, b=1, c="unparsed"),  # 1
             _cell(1, a=1, b=1, c=1), _cell(0, a=0, b=1, c=0), _cell(1, a=1, b=0, c=1), _cell(0, a=1, b=1, c=1)]
    task = _task("max_vote", "a", "b", "c")
    summary = jury_summary(cells, task.judges, task.pooling)
    panel, judges = summary["panel"], summary["judges"]
    # model's answers pooled [1, 0, 0, 1]
    assert (summary["score"], summary["correct"], summary["n"], panel["unjudged"]) == (0.5, 2, 4, 0)
    assert [c["pooled"] for c in cells] == [1, 0, 0, 1, 1, 0, 1, 1]
    # Fleiss over the 6 answers all judges scored: [1,1,0] [0,0,0] [1,1,1] [0,1,0] [1,0,1] [1,1,1];
    # P_i = 1/3, 1, 1, 1/3, 1/3, 1 -> mean 2/3; eleven 1s and seven 0s of 18 -> P_e = (121 + 49)/324 = 85/162;
    # kappa = (2/3 - 85/162) / (1 - 85/162) = 23/77.
    assert panel["fleiss_n"] == 6 and panel["fleiss_kappa"] == pytest.approx(23 / 77)
    # Cohen with humans [1,0,1,0]: panel [1,0,1,1] -> p_o 3/4, p_e = 3/4*1/2 + 1/4*1/2 = 1/2 -> 0.5;
    # b [1,1,0,1] -> p_o 1/4, p_e 1/2 -> -0.5; a and c as the panel.
    assert (panel["human_kappa"], panel["human_n"]) == (pytest.approx(0.5), 4)
    assert judges["a"]["human_kappa"] == pytest.approx(0.5) and judges["b"]["human_kappa"] == pytest.approx(-0.5)
    assert judges["c"]["human_kappa"] == pytest.approx(0.5)
    # per judge, on the model's answers: a [1,0,1,1] -> 0.75; b [1,0,1] -> 2/3 (one failed); c [0,0,0] (one unparsed)
    assert [judges[n]["score"] for n in "abc"] == [0.75, pytest.approx(2 / 3), 0.0]
    assert [(judges[n]["n"], judges[n]["failed"], judges[n]["unparsed"]) for n in "abc"] == [(4, 0, 0), (3, 1, 0),
                                                                                           (3, 0, 1)]
    # a: 8 calls x (100 in, 2 out) at $1 and $10 per 1M -> (800 * 1 + 16 * 10) / 1e6
    assert (judges["a"]["calls"], judges["a"]["prompt_tokens"], judges["a"]["completion_tokens"]) == (8, 800, 16)
    assert judges["a"]["cost_usd"] == pytest.approx(960e-6) and judges["b"]["prompt_tokens"] == 700
    assert (panel["calls"], panel["failed"], panel["unparsed"], panel["attempts"]) == (24, 1, 1, 26)
    assert panel["cost_usd"] == pytest.approx((2300 + 46 * 10) / 1e6)


def test_average_summary_by_hand() -> None:
    cells = [_cell(None, x=4, y=5), _cell(None, x=2, y="failed"), _cell(None, x="unparsed", y="failed"),
             _cell(5, x=5, y=4), _cell(1, x=1, y=2), _cell(3, x=3, y=3)]
    task = _task("average", "x", "y")
    summary = jury_summary(cells, task.judges, task.pooling)
    panel, judges = summary["panel"], summary["judges"]
    # model's answers pooled 4.5, 2, none -> mean 3.25 over 2, one unjudged; score (3.25 - 1) / 4
    assert (summary["mean_rating"], summary["score"], summary["n"], panel["unjudged"]) == (3.25, 0.5625, 2, 1)
    # Fleiss over [4,5] [5,4] [1,2] [3,3] with 5 categories: P_i = 0, 0, 0, 1 -> 1/4; category shares 1,1,2,2,2 of
    # 8 -> P_e = 14/64; kappa = (1/4 - 7/32) / (1 - 7/32) = 1/25.
    assert panel["fleiss_kappa"] == pytest.approx(0.04) and panel["fleiss_n"] == 4
    # Panel vs humans, quadratic: means 4.5, 1.5, 3 round half up to [5, 2, 3] vs [5, 1, 3]: observed 1/16/3 = 1/48;
    # expected: E[(x-y)^2] for x = 5, 2, 3 against {5, 1, 3} is 20/3, 11/3, 8/3, mean 13/3 -> 13/48; 1 - 1/13.
    assert panel["human_kappa"] == pytest.approx(12 / 13)
    # x [5,1,3] agrees exactly -> 1; y [4,2,3]: observed 2/16/3 = 1/24, expected (11/3 + 11/3 + 8/3)/3/16 = 10/48
    # -> 1 - 0.2 = 0.8
    assert judges["x"]["human_kappa"] == pytest.approx(1.0) and judges["y"]["human_kappa"] == pytest.approx(0.8)
    assert judges["x"]["score"] == 0.5 and judges["y"]["score"] == 1.0  # means 3 and 5


# --- the HTTP judge ---------------------------------------------------------------------------------------------

def _http(url: str, **settings: Any) -> tuple[HttpJudge, list[float]]:
    waits: list[float] = []
    spec = JudgeSpec(name="j", model="judge-model", url=url, **settings)
    return HttpJudge(spec, sleep=waits.append), waits


def test_http_judge_answers_with_usage_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JURY_TEST_KEY", "sk-test-123")
    with serving(lambda request, n: Answer("True", usage=(321, 1))) as server:
        judge, waits = _http(server.url, api_key_env="JURY_TEST_KEY", max_tokens=5)
        [reply] = judge.ask(["Is it right?"])
    assert (reply.text, reply.error, reply.attempts, reply.prompt_tokens, reply.completion_tokens) == (
        "True", None, 1, 321, 1)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["json"] == {"model": "judge-model", "messages": [{"role": "user", "content": "Is it right?"}],
                               "max_tokens": 5, "temperature": 0}
    assert waits == []


def test_http_judge_retries_429_after_retry_after_and_5xx_with_backoff() -> None:
    script = {0: Answer(status=429, headers={"Retry-After": "7"}), 1: Answer(status=500), 2: Answer(status=503)}
    with serving(lambda request, n: script.get(n, Answer("False"))) as server:
        judge, waits = _http(server.url, max_attempts=5, backoff_s=0.5)
        [reply] = judge.ask(["q"])
    # 429 waits what the server asked (7 s), then backoff 0.5 * 2^1 and 0.5 * 2^2 after the 2nd and 3rd attempts
    assert waits == [7.0, 1.0, 2.0]
    assert (reply.text, reply.attempts, len(server.requests)) == ("False", 4, 4)


def test_http_judge_gives_up_after_max_attempts_and_caps_the_wait() -> None:
    with serving(lambda request, n: Answer(status=503, headers={"Retry-After": "3600"})) as server:
        judge, waits = _http(server.url, max_attempts=3, max_wait_s=5)
        [reply] = judge.ask(["q"])
    assert (reply.text, reply.error, reply.attempts, len(server.requests)) == (None, "HTTP 503 Service Unavailable",
                                                                               3, 3)
    assert waits == [5.0, 5.0]


def test_http_judge_does_not_retry_a_client_error() -> None:
    with serving(lambda request, n: Answer(status=401)) as server:
        judge, waits = _http(server.url, max_attempts=4)
        [reply] = judge.ask(["q"])
    assert (reply.error, reply.attempts, len(server.requests), waits) == ("HTTP 401 Unauthorized", 1, 1, [])


def test_http_judge_retries_a_timeout() -> None:
    with serving(lambda request, n: Answer("True", delay=1.0 if n == 0 else 0.0)) as server:
        judge, waits = _http(server.url, timeout_s=0.3, backoff_s=0.25)
        [reply] = judge.ask(["q"])
    assert (reply.text, reply.attempts, waits) == ("True", 2, [0.25])
    with serving(lambda request, n: Answer("True", delay=1.0)) as server:
        judge, waits = _http(server.url, timeout_s=0.2, max_attempts=2)
        [reply] = judge.ask(["q"])
    assert reply.text is None and reply.attempts == 2 and "timed out" in (reply.error or "")


def test_http_judge_malformed_answers_fail_without_retry() -> None:
    bodies = [b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}']
    with serving(lambda request, n: Answer(body=bodies[n])) as server:
        judge, _ = _http(server.url)
        replies = judge.ask(["a", "b", "c"])
    assert [r.text for r in replies] == [None, None, None] and [r.attempts for r in replies] == [1, 1, 1]
    assert all((r.error or "").startswith("malformed response") for r in replies)


def test_http_judge_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JURY_ABSENT_KEY", raising=False)
    with pytest.raises(UserError, match="judge j: api_key_env: environment variable JURY_ABSENT_KEY is not set"):
        _http("http://127.0.0.1:9/v1", api_key_env="JURY_ABSENT_KEY")


# --- local judges -----------------------------------------------------------------------------------------------

def _tiny_folder(folder: Path) -> Path:
    tiny_model(max_positions=4096).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_local_judge_on_a_tiny_model(tmp_path: Path) -> None:
    judge = LocalJudge(JudgeSpec(name="tiny", model=str(_tiny_folder(tmp_path / "tiny")), max_tokens=4,
                                 batch_size=2), CPU)
    prompts = ["Is the sky blue?", "Question: two plus two? Answer: four. True or False?", "x"]
    replies = judge.ask(prompts)
    assert [r.prompt_tokens for r in replies] == [len(tiny_tokenizer()(p + "\nVerdict:")["input_ids"]) for p in prompts]
    assert all(r.error is None and r.text is not None and 1 <= r.completion_tokens <= 4 and r.attempts == 1
               for r in replies)


@needs_small_model
def test_local_judge_on_the_real_small_model() -> None:
    judge = LocalJudge(JudgeSpec(name="smollm2", model=str(SMALL_MODEL), max_tokens=8), CPU)
    prompt = JUDGE_PROMPTS["max_vote"].format(question="What is the capital of France?", reference="Paris",
                                              answer="The capital of France is Paris.")
    [reply] = judge.ask([prompt])
    chat = judge.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    assert reply.prompt_tokens == len(judge.tokenizer(chat, add_special_tokens=False)["input_ids"])
    # a verdict it can be held to, though not a good one: 135M parameters say "False" to this and to every answer
    # tried (right or wrong), so this model tests the path, not judging
    assert reply.text is not None and parse_verdict("max_vote", reply.text) in (0, 1), reply.text
    assert 1 <= reply.completion_tokens <= 8


def test_a_missing_local_judge_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="judge gone: model: cannot load"):
        LocalJudge(JudgeSpec(name="gone", model=str(tmp_path / "absent")), CPU)


# --- data and suite validation ----------------------------------------------------------------------------------

def _item(**fields: Any) -> str:
    return json.dumps({"question": "Who?", "reference": "Ada", **fields}) + "\n"


def test_data_errors_name_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(_item() + "\n" + _item(labelled=[{"answer": "Bob", "human": 2}]))
    with pytest.raises(UserError, match=r"d.jsonl:3: labelled\[0\].human: must be one of \(0, 1\)"):
        read_items(data, "max_vote")
    assert read_items(data, "average")[1].id == "3"  # 2 is a rating; ids default to the line number
    data.write_text(_item() + '{"question": "Who?"}\n')
    with pytest.raises(UserError, match="d.jsonl:2: reference: Field required"):
        read_items(data, "max_vote")
    data.write_text(_item(refrence="Ada") + _item(labelled=[{"answer": "Bob", "humn": 1}]))
    with pytest.raises(UserError) as caught:
        read_items(data, "max_vote")
    assert str(caught.value).endswith("d.jsonl:1: refrence: unknown key (did you mean reference?)")
    data.write_text(_item() + _item(labelled=[{"answer": "Bob", "humn": 1}]))
    with pytest.raises(UserError) as caught:
        read_items(data, "max_vote")
    assert str(caught.value).endswith("d.jsonl:2: labelled[0].humn: unknown key (did you mean human?)")
    data.write_text(_item() + "{oops\n")
    with pytest.raises(UserError, match="d.jsonl:2: not a JSON object"):
        read_items(data, "max_vote")
    data.write_text(_item(id="a") + _item(id="a"))
    with pytest.raises(UserError, match="ids must be unique"):
        read_items(data, "max_vote")


def test_every_judge_is_checked_before_any_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JURY_ABSENT_KEY", raising=False)

    def panel(**judge: Any) -> SimpleNamespace:
        return SimpleNamespace(judges=[JudgeSpec(name="j", **judge)])

    with pytest.raises(UserError, match="judge j: api_key_env: environment variable JURY_ABSENT_KEY is not set"):
        check_panel(panel(model="m", url="http://127.0.0.1:9/v1", api_key_env="JURY_ABSENT_KEY"))
    with pytest.raises(UserError, match=r"judge j: url: nothing answers at http://127.0.0.1:9/v1 \(is its server"):
        check_panel(panel(model="m", url="http://127.0.0.1:9/v1"))
    with pytest.raises(UserError, match="judge j: url: 'http://' is no http"):
        check_panel(panel(model="m", url="http://"))
    with pytest.raises(UserError, match="judge j: model: no such folder, and not a hub id: ./no-judge"):
        check_panel(panel(model="./no-judge"))
    with serving(lambda request, n: Answer("True")) as server:
        check_panel(panel(model="m", url=server.url))
    judge = tmp_path / "judge"
    tiny_model().save_pretrained(judge)
    with pytest.raises(UserError, match=f"judge j: model: cannot load the tokenizer of '{judge}'"):
        check_panel(panel(model=str(judge)))  # a model folder without its tokenizer
    tokenizer = copy.deepcopy(tiny_tokenizer())  # the shared one keeps its specials
    tokenizer.pad_token = tokenizer.eos_token = None
    tokenizer.save_pretrained(judge)
    with pytest.raises(UserError, match=f"judge j: model: '{judge}' has neither a pad nor an eos token"):
        check_panel(panel(model=str(judge)))
    tiny_tokenizer().save_pretrained(judge)
    check_panel(panel(model=str(judge)))


def test_suite_errors(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text(_item())
    suite = tmp_path / "s.yaml"
    head = "name: s\ntasks:\n  - type: jury\n    data: d.jsonl\n    judges:\n"
    suite.write_text(head + "      - {name: a, model: m, url: 'http://h/v1', api_key: sk-oops}\n")
    with pytest.raises(UserError, match=r"s.yaml:6: tasks\[0\].judges\[0\].api_key: unknown key"):
        load_suite(suite)
    suite.write_text(head + "      - {name: a, model: m, api_key_env: KEY}\n")
    with pytest.raises(UserError, match="api_key_env is for HTTP judges"):
        load_suite(suite)
    suite.write_text(head + "      - {name: a, model: m, url: 'http://h/v1'}\n      - {name: a, model: n, url: "
                     "'http://h/v1'}\n")
    with pytest.raises(UserError, match="judges: names must be unique"):
        load_suite(suite)
    suite.write_text(head.replace("d.jsonl", "absent.jsonl") + "      - {name: a, model: m, url: 'http://h/v1'}\n")
    with pytest.raises(UserError, match=r"tasks\[0\].data: no such file"):
        load_suite(suite)


# --- the evaluated model's prompt ------------------------------------------------------------------------------

def _find(haystack: list[int], needle: list[int]) -> int:
    return next(i for i in range(len(haystack) - len(needle) + 1) if haystack[i:i + len(needle)] == needle)


def test_answer_prompt_alone_and_inside_filler(tmp_path: Path) -> None:
    ctx = EvalContext(TransformersBackend(tiny_model(), tiny_tokenizer()), tmp_path, "s", "tiny")
    item = JuryItem(id="q", context="Ada wrote the first program for the engine.", question="Who wrote it?",
                    reference="Ada")
    task = JuryTask(type="jury", data="d.jsonl", judges=[JudgeSpec(name="a", model="m", url="http://h/v1")])
    ask = list(ctx.tokens(ASK.format(question=item.question) + "\nAnswer:"))
    assert answer_prompt(task, ctx, item, None) == list(ctx.tokens.bos) + list(ctx.tokens(item.context)) + ask
    for depth in (0.0, 0.5, 1.0):
        padded = answer_prompt(task.model_copy(update={"length": 600, "depth": depth}), ctx, item, None)
        context = list(ctx.tokens(f"\n\n{item.context}\n\n"))
        start = _find(padded, context)
        filler = len(padded) - len(ctx.tokens.bos) - len(context) - len(ask)
        # at most 600 tokens, short of it by less than one filler sentence; the context at its depth of the filler
        assert 570 < len(padded) <= 600 and padded[-len(ask):] == ask
        assert abs((start - len(ctx.tokens.bos)) - depth * filler) <= 30
    with pytest.raises(UserError, match="task jury: length: item q: length 20 is too short"):
        answer_prompt(task.model_copy(update={"length": 20}), ctx, item, None)


# --- a run ------------------------------------------------------------------------------------------------------

def _by_model(request: dict[str, Any], n: int) -> Answer:
    if request["model"] == "down":
        return Answer(status=500)
    if request["model"] == "mumbles":
        return Answer("I cannot tell.")
    return Answer("True" if "Ada" in request["messages"][0]["content"].split("Provided answer:")[1] else "False")


def test_run_records_failed_and_unparsed_judges_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(_item(id="q1", context="Ada wrote the first program.", labelled=[{"answer": "Ada", "human": 1},
                                                                                    {"answer": "Bob", "human": 0}])
                    + _item(id="q2", context="Ada Lovelace.", question="Who, again?"))
    with serving(_by_model) as server:
        judges = [JudgeSpec(name=name, model=name, url=server.url, max_attempts=2, backoff_s=0.0)
                  for name in ("fair", "down", "mumbles")]
        task = JuryTask(type="jury", data=str(data), judges=judges, max_new_tokens=4, batch_size=2)
        folder = tmp_path / "out"
        ctx = EvalContext(TransformersBackend(tiny_model(max_positions=512), tiny_tokenizer()), folder, "s", "tiny")
        entry = run_jury(task, ctx, SuiteResults(folder / "s.json", "s", "t", "tiny", "fp"))
        calls = len(server.requests)
        again = run_jury(task, ctx, SuiteResults(folder / "s.json", "s", "t", "tiny", "fp"))
    # 2 model answers + 2 labelled answers = 4 cells; "down" tries twice per answer
    assert calls == 4 + 4 * 2 + 4 and len(server.requests) == calls  # the resumed run called no judge
    assert again["panel"] == entry["panel"] and entry["complete"]
    judges_out = entry["judges"]
    assert (judges_out["down"]["failed"], judges_out["down"]["attempts"], judges_out["down"]["n"]) == (4, 8, 0)
    assert (judges_out["mumbles"]["unparsed"], judges_out["mumbles"]["n"]) == (4, 0)
    # only "fair" votes: the labelled answers get True (Ada) and False (Bob), as the humans said
    assert judges_out["fair"]["human_kappa"] == pytest.approx(1.0) and entry["panel"]["human_kappa"] == 1.0
    assert entry["panel"]["fleiss_n"] == 0 and entry["panel"]["fleiss_kappa"] is None
    assert (entry["items"], entry["n"], entry["panel"]["unjudged"]) == (2, 2, 0)
    raw = [json.loads(line) for line in (folder / entry["raw_outputs"]).read_text().splitlines()]
    assert len(raw) == 4 * 3 and {r["judge"] for r in raw} == {"fair", "down", "mumbles"}
    assert {r["error"] for r in raw if r["judge"] == "down"} == {"HTTP 500 Internal Server Error"}
    assert {r["output"] for r in raw if r["judge"] == "mumbles"} == {"I cannot tell."}


def test_report_cell_and_headline() -> None:
    from toolkit.evals.jury import jury_cell
    from toolkit.evals.registry import headline
    from toolkit.run_folder import Run, RunInfo

    run = Run(Path("."), None, RunInfo(), [], {})
    panel = {"n": 2, "unjudged": 1, "fleiss_kappa": 0.04, "human_kappa": None, "failed": 3, "unparsed": 1, "calls": 12}
    rated = {"type": "jury", "score": 0.5625, "pooling": "average", "mean_rating": 3.25, "n": 2, "panel": panel}
    assert jury_cell(run, "t", rated) == "0.56 (mean rating 3.25/5) n=2 (1 unjudged)"  # the score, (3.25 - 1) / 4
    assert headline(rated) == ("score 0.562, average over 2 answers (1 unjudged), Fleiss kappa 0.040, human kappa -, "
                               "3 failed, 1 unparsed of 12 judge calls")
    voted = {"type": "jury", "score": 0.5, "pooling": "max_vote", "correct": 2, "n": 4, "panel": {"unjudged": 0}}
    assert jury_cell(run, "t", voted) == "0.50 [0.15, 0.85] n=4"  # Wilson interval of 2/4
