"""Loss by context position on long held-out documents: does the model use (or get lost in) long context?

The loss at position i is that of predicting token i from tokens < i (the backend's ``token_losses``); positions are
grouped in buckets [0, b), [b, 2b), ... The report plots the loss by position of every tag.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import PositiveInt, model_validator, with_config
from typing_extensions import Required, TypedDict

from toolkit.evals import plots
from toolkit.evals.batching import batch_size_for, batched
from toolkit.evals.context import EvalContext
from toolkit.evals.haystack import load_sentences, long_document
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import HaystackSpec, TaskBase
from toolkit.evals.task_type import Entry, TaskType, not_cut_short
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Image, Table
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


def mean_of(parts: Sequence[torch.Tensor]) -> float:
    """The mean of all the values of ``parts`` together."""
    return sum(part.sum().item() for part in parts) / sum(part.numel() for part in parts)


@with_config(SHAPE_CONFIG)
class PerplexityEntry(TypedDict, total=False):
    """A finished perplexity entry (:func:`run_perplexity`) as its readers take it."""

    loss_by_bucket: Required[dict[str, float]]
    mean_loss: float
    perplexity: float


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
    summary = {"loss_by_bucket": by_bucket, "perplexity_by_bucket": {k: math.exp(v) for k, v in by_bucket.items()},
               "mean_loss": mean_loss, "perplexity": math.exp(mean_loss), "length": task.length}
    plots.loss_by_position({ctx.folder.name: by_bucket}, f"{ctx.model_name} {task.key}: loss by position",
                           ctx.plot_path(task.key))
    return results.record(task, summary=summary)


def perplexity_headline(entry: Entry) -> str | None:
    return f"perplexity {entry['perplexity']:.3f}" if "perplexity" in entry else None


def perplexity_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("perplexity"):
        found = not_cut_short(run, suite, task)
        if not found:
            continue
        path = plots.loss_by_position({tag: e["loss_by_bucket"] for tag, e in found}, f"{suite}/{task}",
                                      run.folder / f"perplexity-{suite}-{task}.png")
        blocks += [Image(path, f"loss by position {suite}/{task}"),
                   Table(["tag", "mean loss", "perplexity"],
                         [[tag, fmt(e.get("mean_loss")), fmt(e.get("perplexity"))] for tag, e in found])]
    return [Heading("Loss by position"), *blocks] if blocks else []


TASK_TYPE = TaskType(PerplexityTask, run_perplexity, headline=perplexity_headline, section=perplexity_section, rank=40,
                     entry=PerplexityEntry)
