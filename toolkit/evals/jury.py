"""The ``jury`` task: the evaluated model answers long-context questions, a panel of judges (PoLL) scores them.

Each answer is generated greedily; every judge sees the question, the reference and the answer (not the long
context) and says True/False (``max_vote``) or rates 1-5 (``average``); they also score the item's
human-labelled answers, which measure their agreement with people (not the model's score). A judge that fails or answers
unparseably counts as such (``failed``/``unparsed``) and its vote is left out of the pooling of that answer; an
answer no judge could score is ``unjudged`` and left out of the score, and both are shown. Cells keep every vote,
so the summary is recomputed from them and a resumed run judges only new items. The judges' raw outputs go to
``<folder>/<suite>-<task>-judges.jsonl``. With ``length``, each context is hidden at ``depth`` inside filler text
up to that many tokens, so the same items test any context length.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.data.needle import build_haystack
from toolkit.errors import UserError
from toolkit.evals.agreement import average, cohen_kappa, fleiss_kappa, max_vote
from toolkit.evals.judges import Judge, Reply, make_judge
from toolkit.evals.jury_spec import LABELS, JuryItem, JuryTask, Pooling, read_items
from toolkit.evals.scoring import batched, generate_greedy
from toolkit.evals.sources import filler_window, load_sentences

if TYPE_CHECKING:
    from toolkit.evals.context import EvalContext
    from toolkit.evals.results import SuiteResults

Cell = dict[str, Any]

ASK = "\n\nAnswer the question using the text above, in one sentence.\nQuestion: {question}"
"""Follows the context (and filler) in the evaluated model's prompt; without a chat template, then ``\nAnswer:``."""
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
_VERDICT = {"max_vote": re.compile(r"\b(true|false)\b", re.IGNORECASE), "average": re.compile(r"\b([1-5])\b")}


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


@dataclass(frozen=True)
class _Context:
    """The item's context as the one "needle" of a haystack (``toolkit.data.needle.Statement``)."""

    sentence: str


@dataclass(frozen=True)
class _Ask:
    """The item's question at the end of the prompt (``toolkit.data.needle.Question``); no answer is forced."""

    ask: str
    question: str
    lead: str = ""
    answer: str = ""


def answer_prompt(task: JuryTask, ctx: EvalContext, item: JuryItem, sentences: tuple[str, ...] | None) -> list[int]:
    """The evaluated model's prompt: the context (inside filler up to ``task.length``), then the question."""
    ask = ASK.format(question=item.question)
    context, asked = _Context(f"\n\n{item.context.strip()}\n\n"), _Ask(ask, ask + "\nAnswer:")
    chat = ctx.chat_frame if task.chat else None
    if task.length is None:
        head = list(chat.head) if chat else list(ctx.tokens.bos)
        tail = list(ctx.tokens(ask)) + list(chat.turn) if chat else list(ctx.tokens(asked.question))
        return head + list(ctx.tokens(item.context)) + tail
    rng = random.Random(f"{task.seed}:{item.id}")
    try:
        return build_haystack(ctx.tokens, task.length, [context], [task.depth], asked, rng,
                              filler_window(sentences, rng, task.length), chat).input_ids
    except ValueError as exc:
        raise UserError(f"suite {ctx.suite}: task {task.key}: length: item {item.id}: {exc}") from None


def _vote(pooling: Pooling, reply: Reply) -> dict[str, Any]:
    verdict = parse_verdict(pooling, reply.text) if reply.text is not None else None
    status = "failed" if reply.text is None else "ok" if verdict is not None else "unparsed"
    return {"verdict": verdict, "status": status, "attempts": reply.attempts, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens, "seconds": round(reply.seconds, 4)}


def _judge_chunk(task: JuryTask, judges: list[Judge], chunk: list[JuryItem], answers: list[str],
                 raw_path: Path) -> list[Cell]:
    """One cell per judged answer: the model's (``human`` None) and each labelled answer of every item."""
    cells: list[Cell] = [{"key": item_key(item), "id": item.id, "answer": answer, "human": None, "labelled": False}
                         for item, answer in zip(chunk, answers, strict=True)]
    cells += [{"key": item_key(item), "id": item.id, "answer": given.answer, "human": given.human, "labelled": True}
              for item in chunk for given in item.labelled]
    questions = {item_key(item): item for item in chunk}
    prompts = [JUDGE_PROMPTS[task.pooling].format(question=questions[c["key"]].question,
                                                  reference=questions[c["key"]].reference, answer=c["answer"])
               for c in cells]
    replies = {judge.spec.name: judge.ask(prompts) for judge in judges}
    with raw_path.open("a", encoding="utf-8") as raw:
        for i, cell in enumerate(cells):
            cell["votes"] = {name: _vote(task.pooling, answered[i]) for name, answered in replies.items()}
            for name, answered in replies.items():
                raw.write(json.dumps({"item": cell["id"], "labelled": cell["labelled"], "judge": name,
                                      "output": answered[i].text, "error": answered[i].error,
                                      **cell["votes"][name]}) + "\n")
    return cells


def run_jury(task: JuryTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    items = read_items(Path(task.data), task.pooling)
    recorded: dict[str, list[Cell]] = {}
    for cell in results.cells(task):
        recorded.setdefault(cell["key"], []).append(cell)
    raw_path = ctx.folder / f"{ctx.suite}-{task.key}-judges.jsonl"
    if not recorded:
        raw_path.unlink(missing_ok=True)
    todo = [item for item in items if item_key(item) not in recorded]
    if todo:
        judges = [make_judge(spec, ctx.device) for spec in task.judges]  # each loaded once
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        sentences = load_sentences(task.haystack) if task.length else None
        for chunk in batched(todo, task.batch_size):
            prompts = [answer_prompt(task, ctx, item, sentences) for item in chunk]
            answers = generate_greedy(ctx.model, ctx.tokenizer, prompts, task.max_new_tokens, ctx.pad_id)
            for cell in _judge_chunk(task, judges, list(chunk), [a.strip() for a in answers], raw_path):
                recorded.setdefault(cell["key"], []).append(cell)
            results.record(task, [c for item in items for c in recorded.get(item_key(item), [])])
    cells = [c for item in items for c in recorded[item_key(item)]]
    summary = jury_summary(cells, task)
    summary["raw_outputs"] = raw_path.name
    return results.record(task, cells, summary)


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


def _judge_stats(task: JuryTask, cells: list[Cell], name: str) -> dict[str, Any]:
    spec = next(judge for judge in task.judges if judge.name == name)
    votes = [cell["votes"][name] for cell in cells]
    valid = [c["votes"][name]["verdict"] for c in cells
             if not c["labelled"] and c["votes"][name]["verdict"] is not None]
    pairs = [(c["votes"][name]["verdict"], c["human"]) for c in cells
             if c["labelled"] and c["votes"][name]["verdict"] is not None]
    tokens_in, tokens_out = sum(v["prompt_tokens"] for v in votes), sum(v["completion_tokens"] for v in votes)
    return {"backend": "http" if spec.url else "local", "model": spec.model, "score": _score(task.pooling, valid),
            "n": len(valid), "calls": len(votes), "attempts": sum(v["attempts"] for v in votes),
            "failed": sum(v["status"] == "failed" for v in votes),
            "unparsed": sum(v["status"] == "unparsed" for v in votes),
            "prompt_tokens": tokens_in, "completion_tokens": tokens_out,
            "seconds": round(sum(v["seconds"] for v in votes), 3),
            "cost_usd": (tokens_in * spec.price_input + tokens_out * spec.price_output) / 1e6,
            "human_kappa": _kappa_with_humans(task.pooling, pairs), "human_n": len(pairs)}


def jury_summary(cells: list[Cell], task: JuryTask) -> dict[str, Any]:
    """Per judge and for the panel: the score of the model's answers; agreement among the judges (Fleiss' kappa,
    over every answer all judges scored) and with humans (Cohen's kappa, over the labelled answers); calls,
    failures, tokens, seconds and cost. Each cell gets its ``pooled`` verdict."""
    names = [judge.name for judge in task.judges]
    pool = max_vote if task.pooling == "max_vote" else average
    for cell in cells:
        cell["pooled"] = pool([cell["votes"][name]["verdict"] for name in names])
    model = [cell for cell in cells if not cell["labelled"]]
    judged = [cell["pooled"] for cell in model if cell["pooled"] is not None]
    complete = [[cell["votes"][name]["verdict"] for name in names] for cell in cells
                if all(cell["votes"][name]["verdict"] is not None for name in names)]
    pairs = [(cell["pooled"], cell["human"]) for cell in cells if cell["labelled"] and cell["pooled"] is not None]
    judges = {name: _judge_stats(task, cells, name) for name in names}
    panel = {"score": _score(task.pooling, judged), "n": len(judged), "unjudged": len(model) - len(judged),
             "fleiss_kappa": fleiss_kappa(complete, LABELS[task.pooling]), "fleiss_n": len(complete),
             "human_kappa": _kappa_with_humans(task.pooling, pairs), "human_n": len(pairs)}
    for field in ("calls", "attempts", "failed", "unparsed", "prompt_tokens", "completion_tokens", "seconds",
                  "cost_usd"):
        panel[field] = sum(stats[field] for stats in judges.values())
    summary: dict[str, Any] = {"score": panel["score"], "pooling": task.pooling, "n": len(judged),
                               "items": len(model), "panel": panel, "judges": judges}
    if task.pooling == "max_vote":
        summary["correct"] = int(sum(judged))
    else:
        summary["mean_rating"] = sum(judged) / len(judged) if judged else None
    return summary
