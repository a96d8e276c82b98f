"""Loss by context position on long held-out documents: does the model use (or get lost in) long context?

The loss at position i is that of predicting token i from tokens < i (the backend's ``token_losses``); positions are
grouped in buckets [0, b), [b, 2b), ... The report plots the loss by position of every tag.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Required

from pydantic import PositiveInt, model_validator, with_config
from typing_extensions import TypedDict

from toolkit.evals import plots
from toolkit.evals.batching import batch_size_for, batched
from toolkit.evals.context import EvalContext
from toolkit.evals.haystack import load_sentences, long_document
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import HaystackSpec, TaskBase
from toolkit.evals.stats import LOSS_RATIO_INTERVAL, Comparison
from toolkit.evals.task_type import Entry, TaskType, not_cut_short
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Image, Paragraph, Table
from toolkit.formatting.numbers import fmt
from toolkit.formatting.progress import progress_bar
from toolkit.run_folder import Run

if TYPE_CHECKING:
    import torch


class PerplexityTask(TaskBase):
    """Loss by token position on long held-out documents."""

    type: Literal["perplexity"]
    length: PositiveInt
    """Document length in tokens."""
    bucket: PositiveInt
    """Width of the position buckets: [0, bucket), [bucket, 2*bucket), ..."""
    documents: PositiveInt = 4
    source: HaystackSpec = HaystackSpec()
    batch_tokens: PositiveInt = 16384

    @model_validator(mode="after")
    def _bucket_fits(self) -> PerplexityTask:
        if self.bucket > self.length:
            raise ValueError(f"bucket {self.bucket} is longer than length {self.length}")
        return self


def bucket_losses(batches: Sequence[torch.Tensor], bucket: int) -> dict[str, float]:
    """Mean loss per bucket of predicted-token positions, keyed by the bucket's first position, over ``batches`` (the
    backend's losses, all of one length: position p is column p - 1)."""
    length, out = batches[0].shape[1], {}
    for start in range(0, length + 1, bucket):
        first, stop = max(start, 1) - 1, min(start + bucket, length + 1) - 1
        if stop > first:
            out[str(start)] = mean_of([losses[:, first:stop] for losses in batches])
    return out


def document_losses(batches: Sequence[torch.Tensor], bucket: int) -> tuple[list[float], list[dict[str, float]]]:
    """Each document's mean loss and its mean loss per bucket (:func:`bucket_losses`), in order: what an interval of
    two models' perplexities on the same documents is made from."""
    rows = [losses[i:i + 1] for losses in batches for i in range(losses.shape[0])]
    return [mean_of([row]) for row in rows], [bucket_losses([row], bucket) for row in rows]


def mean_of(parts: Sequence[torch.Tensor]) -> float:
    """The mean of all the values of ``parts`` together."""
    return sum(part.sum().item() for part in parts) / sum(part.numel() for part in parts)


@with_config(SHAPE_CONFIG)
class PerplexityEntry(TypedDict, total=False):
    """A finished perplexity entry (:func:`run_perplexity`) as its readers take it."""

    loss_by_bucket: Required[dict[str, float]]
    mean_loss: float
    perplexity: float
    document_mean_loss: list[float]
    document_loss_by_bucket: list[dict[str, float]]


def run_perplexity(task: PerplexityTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    if (done := results.finished(task)) is not None:
        return done
    sentences = load_sentences(task.source)
    docs = [long_document(ctx.tokens, sentences, task.length, random.Random(f"{task.seed}:doc:{i}"))
            for i in range(task.documents)]
    batches = []
    for chunk in progress_bar(iterable=list(batched(docs, batch_size_for(task.length, task.batch_tokens))),
                              desc=f"{ctx.suite}/{task.key}", unit="batch"):
        batches.append(ctx.backend.token_losses(chunk))
    by_bucket = bucket_losses(batches, task.bucket)
    mean_loss = mean_of(batches)
    document_mean, document_by_bucket = document_losses(batches, task.bucket)
    summary = {"loss_by_bucket": by_bucket, "perplexity_by_bucket": {k: math.exp(v) for k, v in by_bucket.items()},
               "mean_loss": mean_loss, "perplexity": math.exp(mean_loss), "length": task.length,
               "document_mean_loss": document_mean, "document_loss_by_bucket": document_by_bucket}
    plots.loss_by_position({ctx.folder.name: by_bucket}, f"{ctx.model_name} {task.key}: loss by position",
                           ctx.plot_path(task.key))
    return results.record(task, summary=summary)


def perplexity_headline(entry: Entry) -> str | None:
    return f"perplexity {entry['perplexity']:.3f}" if "perplexity" in entry else None


def loss_from(by_bucket: dict[str, float], start: int) -> float:
    """Mean loss over the position buckets from ``start`` on (each bucket's mean weighs the same)."""
    losses = [loss for first, loss in by_bucket.items() if int(first) >= start]
    return sum(losses) / len(losses)


def loss_ratio(new: Entry, old: Entry, start: int = 0) -> Comparison | None:
    """``new``'s perplexity / ``old``'s on the same documents, with its interval where both kept each document's
    losses: over whole documents, or over the positions from ``start`` on (their buckets); ``None`` without both
    losses."""
    if start:
        if "loss_by_bucket" not in new or "loss_by_bucket" not in old:
            return None
        new_loss, old_loss = (loss_from(entry["loss_by_bucket"], start) for entry in (new, old))
        documents = [[loss_from(doc, start) for doc in entry["document_loss_by_bucket"]]
                     if "document_loss_by_bucket" in entry else None for entry in (new, old)]
    else:
        if "mean_loss" not in new or "mean_loss" not in old:
            return None
        new_loss, old_loss = new["mean_loss"], old["mean_loss"]
        documents = [new.get("document_mean_loss"), old.get("document_mean_loss")]
    return Comparison.loss_ratio(new_loss, old_loss, *documents)


def perplexity_section(run: Run) -> list[Block]:
    """Loss by position of every tag, and each tag's perplexity against the model before extension's."""
    blocks: list[Block] = []
    ref, compared = run.compared, False
    for suite, task in run.tasks("perplexity"):
        found = not_cut_short(run, suite, task)
        if not found:
            continue
        path = plots.loss_by_position({tag: e["loss_by_bucket"] for tag, e in found}, f"{suite}/{task}",
                                      run.folder / f"perplexity-{suite}-{task}.png")
        before = dict(found).get(ref) if ref else None
        ratios = [loss_ratio(e, before) if before and tag != ref else None for tag, e in found]
        header, rows = ["tag", "mean loss", "perplexity"], [[tag, fmt(e.get("mean_loss")), fmt(e.get("perplexity"))]
                                                            for tag, e in found]
        if any(ratios):
            compared = True
            header.append(f"perplexity / {ref}'s")
            rows = [[*row, "-" if ratio is None else ratio.format(3)] for row, ratio in zip(rows, ratios, strict=True)]
        blocks += [Image(path, f"loss by position {suite}/{task}"), Table(header, rows)]
    if not blocks:
        return []
    return [Heading("Loss by position"), *([Paragraph(LOSS_RATIO_INTERVAL)] if compared else []), *blocks]


TASK_TYPE = TaskType(PerplexityTask, run_perplexity, headline=perplexity_headline, section=perplexity_section, rank=40,
                     entry=PerplexityEntry)
