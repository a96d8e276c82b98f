"""Runners ask the backend, never the model: a recording backend sees exactly the batches of requests the needle,
RULER and perplexity runners build, and the results are made of its answers alone."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_evals_fixtures import tiny_tokenizer
from toolkit.errors import UserError
from toolkit.evals.api import run_tasks
from toolkit.evals.backend import AnswerRequest
from toolkit.evals.context import sentence_tokens
from toolkit.evals.haystack import long_document
from toolkit.evals.niah import NiahTask, needle_prompt
from toolkit.evals.perplexity import PerplexityTask
from toolkit.evals.rope_compare import RopeCompareTask
from toolkit.evals.ruler import RulerTask
from toolkit.evals.ruler_data import ruler_sample
from toolkit.recipe.schema import RopeSpec
from toolkit.run_folder import read_json


@dataclass
class Recording:
    """Records every batch it is asked; answers from the request alone: an answer is right when its first token id is
    even, a continuation repeats the prompt's text, the loss of token i is i."""

    max_length: int | None = None
    name: str = "recording"
    fingerprint: str = "recorded"
    batches: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def tokenizer(self) -> Any:
        return tiny_tokenizer()

    def greedy_matches(self, requests: Sequence[AnswerRequest]) -> list[bool]:
        self.batches.append(("greedy_matches", list(requests)))
        return [request.answer[0] % 2 == 0 for request in requests]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[str]:
        self.batches.append(("generate", ([list(p) for p in prompts], max_new_tokens)))
        return [self.tokenizer.decode(prompt) for prompt in prompts]

    def token_losses(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        self.batches.append(("token_losses", [list(s) for s in sequences]))
        return torch.arange(1, len(sequences[0]), dtype=torch.float32).expand(len(sequences), -1)


def test_the_needle_runner_asks_its_prompts_in_batches_and_records_the_answers(tmp_path: Path) -> None:
    task = NiahTask(type="niah", lengths=[64, 128], depths=[0.0, 1.0], samples=3, batch_tokens=200)
    backend = Recording()
    entry = run_tasks(backend, [task], tmp_path, "s", "t", "rec")["tasks"]["niah"]
    tokens = sentence_tokens(tiny_tokenizer())
    stacks = {(n, d, s): needle_prompt(task, tokens, None, None, n, d, s) for n in (64, 128) for d in (0.0, 1.0)
              for s in range(3)}
    asked = [[AnswerRequest(h.input_ids, h.answer_ids) for h in stacks.values()][i:j]
             for i, j in [(0, 3), (3, 6)] + [(k, k + 1) for k in range(6, 12)]]  # 3 prompts of 64 a batch, 1 of 128
    assert backend.batches == [("greedy_matches", batch) for batch in asked]
    right = {key: h.answer_ids[0] % 2 == 0 for key, h in stacks.items()}
    assert {(c["length"], c["depth"], c["sample"]): c["correct"] for c in entry["cells"]} == right
    assert entry["n"] == 12 and entry["correct"] == sum(right.values())
    assert read_json(tmp_path / "s.json")["fingerprint"] == "recorded"
    run_tasks(backend, [task], tmp_path, "s", "t", "rec")  # the same fingerprint: every cell is reused
    assert len(backend.batches) == 8


def test_a_backends_max_length_caps_the_grid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    task = NiahTask(type="niah", lengths=[64, 128], samples=1)
    backend = Recording(max_length=100)
    with caplog.at_level(logging.WARNING, logger="toolkit.evals.api"):
        entry = run_tasks(backend, [task], tmp_path, "s", "t", "rec")["tasks"]["niah"]
    assert entry["n_by_length"] == {"64": 5} and [len(batch) for _, batch in backend.batches] == [5]
    assert caplog.messages == ["t/s niah: prompt length(s) 128 left out (above 100 tokens)"]


def test_ruler_asks_for_greedy_continuations(tmp_path: Path) -> None:
    task = RulerTask(type="ruler", tasks=["niah_single"], lengths=[256], samples=2)
    backend = Recording()
    entry = run_tasks(backend, [task], tmp_path, "s", "t", "rec")["tasks"]["ruler"]
    tokens = sentence_tokens(tiny_tokenizer())
    samples = [ruler_sample("niah_single", tokens, 256, random.Random(f"0:niah_single:256:{s}"), None, task.digits)
               for s in range(2)]
    assert backend.batches == [("generate", ([s.input_ids for s in samples], max(s.max_new_tokens for s in samples)))]
    assert entry["score"] == 1.0  # the prompt holds the needle's value, and the continuation repeats the prompt


def test_perplexity_asks_for_token_losses(tmp_path: Path) -> None:
    task = PerplexityTask(type="perplexity", length=64, bucket=16, documents=3, batch_tokens=128)
    backend = Recording()
    entry = run_tasks(backend, [task], tmp_path, "s", "t", "rec")["tasks"]["perplexity"]
    docs = [long_document(sentence_tokens(tiny_tokenizer()), None, 64, random.Random(f"0:doc:{i}")) for i in range(3)]
    assert backend.batches == [("token_losses", docs[:2]), ("token_losses", docs[2:])]
    assert entry["loss_by_bucket"] == {"0": 8.0, "16": 23.5, "32": 39.5, "48": 55.5}  # token i's loss is i
    assert entry["mean_loss"] == 32.0


def test_a_type_that_needs_the_transformers_model_says_so_in_one_line(tmp_path: Path) -> None:
    task = RopeCompareTask(type="rope_compare", lengths=[64], settings={"none": RopeSpec(type="default")})
    with pytest.raises(UserError, match="^suite s: this task type needs a transformers model, not recording$"):
        run_tasks(Recording(), [task], tmp_path, "s", "t", "rec")
