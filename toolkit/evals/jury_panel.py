"""The panel of a ``jury`` task (:mod:`toolkit.evals.jury`): the judges' prompt, their verdicts, and the pooled
summary.

Every judge sees the question, the reference and the answer (not the long context) and says True/False
(``max_vote``) or rates 1-5 (``average``). A judge that fails or answers unparseably counts as such
(``failed``/``unparsed``) and its vote is left out of the pooling of that answer; an answer no judge could score is
``unjudged`` and left out of the score.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import with_config
from typing_extensions import TypedDict

from toolkit.evals.agreement import average, cohen_kappa, fleiss_kappa, max_vote
from toolkit.evals.judge_protocol import Judge, Reply
from toolkit.evals.jury_spec import LABELS, JudgeSpec, JuryItem, Pooling
from toolkit.file_reading import SHAPE_CONFIG

Cell = dict[str, Any]

JUDGE_PROMPTS: dict[str, str] = {
    "max_vote": ("You will be given a question, a reference answer and a provided answer. Judge whether the "
                 "provided answer is correct by comparing it to the reference answer. Differently formatted dates, "
                 "missing middle names and alternative spellings count as the same. If the provided answer is "
                 "correct say exactly \"True\", otherwise say exactly \"False\".\n\n"
                 "Question: {question}\nReference answer: {reference}\nProvided answer: {answer}"),
    "average": ("You will be given a question, a reference answer and a provided answer. Rate the provided answer "
                "against the reference answer from 1 to 5: 1 wrong or off-topic, 2 mostly wrong, 3 partly correct, "
                "4 correct but incomplete or imprecise, 5 fully correct. Reply with the number only.\n\n"
                "Question: {question}\nReference answer: {reference}\nProvided answer: {answer}"),
}
VERDICTS: dict[str, tuple[str, ...]] = {"max_vote": ("True", "False"), "average": ("1", "2", "3", "4", "5")}
"""The replies each prompt asks for (what a local judge with ``choose`` picks from)."""
USAGE_FIELDS = ("calls", "attempts", "failed", "unparsed", "prompt_tokens", "completion_tokens", "seconds", "cost_usd")
_VERDICT = {"max_vote": re.compile(r"\b(true|false)\b", re.IGNORECASE), "average": re.compile(r"\b([1-5])\b")}


@with_config(SHAPE_CONFIG)
class Usage(TypedDict):
    """A usage record (:data:`USAGE_FIELDS`, a judge's or a panel's) as the results hold it."""

    calls: int
    attempts: int
    failed: int
    unparsed: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cost_usd: float


def trouble_text(usage: Mapping[str, Any]) -> str:
    """Judge calls that failed or gave no verdict, of all (a usage record: :data:`USAGE_FIELDS`)."""
    return f"{usage['failed']} failed, {usage['unparsed']} unparsed of {usage['calls']} judge calls"


def tokens_text(usage: Mapping[str, Any]) -> str:
    """Prompt / completion tokens of a usage record."""
    return f"{usage['prompt_tokens']}/{usage['completion_tokens']}"


def cost_text(usage: Mapping[str, Any]) -> str:
    """The estimated cost of a usage record, in US dollars."""
    return f"${usage['cost_usd']:.4f}"


def parse_verdict(pooling: Pooling, text: str) -> int | None:
    """The first verdict in a judge's text: True -> 1, False -> 0 (``max_vote``), or a 1-5 rating; ``None`` when
    there is none."""
    match = _VERDICT[pooling].search(text)
    if match is None:
        return None
    word = match.group(1).lower()
    return {"true": 1, "false": 0}[word] if pooling == "max_vote" else int(word)


def item_key(item: JuryItem) -> str:
    """What identifies an item's recorded cell: a digest of its content (edited items are judged again)."""
    return hashlib.sha1(item.model_dump_json().encode()).hexdigest()[:12]


def vote(reply: Reply, parse: Callable[[str], int | None]) -> dict[str, Any]:
    """One judge's vote as recorded in a cell: the ``parse``d verdict (``None``: failed or unparsed), its status and
    what the call cost."""
    verdict = parse(reply.text) if reply.text is not None else None
    status = "failed" if reply.text is None else "ok" if verdict is not None else "unparsed"
    return {"verdict": verdict, "status": status, "attempts": reply.attempts, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens, "seconds": round(reply.seconds, 4)}


def raw_line(judge: str, reply: Reply, recorded: dict[str, Any], **where: Any) -> str:
    """A line of the raw-outputs JSONL: where the call belongs, the judge, its text or error and its vote."""
    return json.dumps({**where, "judge": judge, "output": reply.text, "error": reply.error, **recorded}) + "\n"


def judge_chunk(pooling: Pooling, judges: list[Judge], chunk: list[JuryItem], answers: list[str],
                raw_path: Path) -> list[Cell]:
    """One cell per judged answer: the model's (``human`` None) and each labelled answer of every item."""
    cells: list[Cell] = [{"key": item_key(item), "id": item.id, "answer": answer, "human": None, "labelled": False}
                         for item, answer in zip(chunk, answers, strict=True)]
    cells += [{"key": item_key(item), "id": item.id, "answer": given.answer, "human": given.human, "labelled": True}
              for item in chunk for given in item.labelled]
    questions = {item_key(item): item for item in chunk}
    prompts = [JUDGE_PROMPTS[pooling].format(question=questions[c["key"]].question,
                                             reference=questions[c["key"]].reference, answer=c["answer"])
               for c in cells]
    replies = {judge.spec.name: judge.ask(prompts, VERDICTS[pooling]) for judge in judges}
    with raw_path.open("a", encoding="utf-8") as raw:
        for i, cell in enumerate(cells):
            cell["votes"] = {name: vote(answered[i], partial(parse_verdict, pooling))
                             for name, answered in replies.items()}
            for name, answered in replies.items():
                raw.write(raw_line(name, answered[i], cell["votes"][name], item=cell["id"],
                                   labelled=cell["labelled"]))
    return cells


def _kappa_with_humans(pooling: Pooling, pairs: list[tuple[float, int]]) -> float | None:
    """Cohen's kappa against the human labels: unweighted on 0/1 verdicts; quadratic-weighted on 1-5 ratings, a
    panel's mean rounded half up to a whole rating."""
    if pooling == "max_vote":
        return cohen_kappa([int(x) for x, _ in pairs], [h for _, h in pairs], LABELS[pooling])
    return cohen_kappa([int(x + 0.5) for x, _ in pairs], [h for _, h in pairs], LABELS[pooling], quadratic=True)


def _score(pooling: Pooling, values: list[float]) -> float | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean if pooling == "max_vote" else (mean - 1) / 4


def judge_usage(spec: JudgeSpec, votes: list[dict[str, Any]]) -> dict[str, Any]:
    """A judge's backend and model, and its calls, attempts, failures, tokens, seconds and estimated cost."""
    tokens_in, tokens_out = sum(v["prompt_tokens"] for v in votes), sum(v["completion_tokens"] for v in votes)
    return {"backend": "http" if spec.url else "local", "model": spec.model, "calls": len(votes),
            "attempts": sum(v["attempts"] for v in votes), "failed": sum(v["status"] == "failed" for v in votes),
            "unparsed": sum(v["status"] == "unparsed" for v in votes),
            "prompt_tokens": tokens_in, "completion_tokens": tokens_out,
            "seconds": round(sum(v["seconds"] for v in votes), 3),
            "cost_usd": (tokens_in * spec.price_input + tokens_out * spec.price_output) / 1e6}


def panel_usage(judges: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The panel's calls, attempts, failures, tokens, seconds and cost: its judges' summed."""
    stats = list(judges)
    return {field: sum(judge[field] for judge in stats) for field in USAGE_FIELDS}


def _judge_stats(spec: JudgeSpec, pooling: Pooling, cells: list[Cell]) -> dict[str, Any]:
    name = spec.name
    valid = [c["votes"][name]["verdict"] for c in cells
             if not c["labelled"] and c["votes"][name]["verdict"] is not None]
    pairs = [(c["votes"][name]["verdict"], c["human"]) for c in cells
             if c["labelled"] and c["votes"][name]["verdict"] is not None]
    return {**judge_usage(spec, [cell["votes"][name] for cell in cells]), "score": _score(pooling, valid),
            "n": len(valid), "human_kappa": _kappa_with_humans(pooling, pairs), "human_n": len(pairs)}


def jury_summary(cells: list[Cell], judges: list[JudgeSpec], pooling: Pooling) -> dict[str, Any]:
    """Per judge and for the panel: the score of the model's answers; agreement among the judges (Fleiss' kappa,
    over every answer all judges scored) and with humans (Cohen's kappa, over the labelled answers); calls,
    failures, tokens, seconds and cost. Each cell gets its ``pooled`` verdict."""
    names = [judge.name for judge in judges]
    pool = max_vote if pooling == "max_vote" else average
    for cell in cells:
        cell["pooled"] = pool([cell["votes"][name]["verdict"] for name in names])
    model = [cell for cell in cells if not cell["labelled"]]
    judged = [cell["pooled"] for cell in model if cell["pooled"] is not None]
    complete = [[cell["votes"][name]["verdict"] for name in names] for cell in cells
                if all(cell["votes"][name]["verdict"] is not None for name in names)]
    pairs = [(cell["pooled"], cell["human"]) for cell in cells if cell["labelled"] and cell["pooled"] is not None]
    stats = {judge.name: _judge_stats(judge, pooling, cells) for judge in judges}
    panel = {"score": _score(pooling, judged), "n": len(judged), "unjudged": len(model) - len(judged),
             "fleiss_kappa": fleiss_kappa(complete, LABELS[pooling]), "fleiss_n": len(complete),
             "human_kappa": _kappa_with_humans(pooling, pairs), "human_n": len(pairs)}
    panel.update(panel_usage(stats.values()))
    summary: dict[str, Any] = {"score": panel["score"], "pooling": pooling, "n": len(judged),
                               "items": len(model), "panel": panel, "judges": stats}
    if pooling == "max_vote":
        summary["correct"] = int(sum(judged))
    else:
        summary["mean_rating"] = sum(judged) / len(judged) if judged else None
    return summary
