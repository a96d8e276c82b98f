"""The llama.cpp backend: a GGUF file, run by llama-cpp-python with a context of ``n_ctx`` tokens, answers the
runners' requests (:mod:`toolkit.evals.backend`).

Each batch of requests runs in one child process (:func:`toolkit.export.child_process.in_child`, calling
:mod:`toolkit.export.llama_cpp_scoring`), which loads the file: a crash in native code ends the evaluation with one
line. Requests are token ids of the run's transformers tokenizer, which the exported file carries (the export tests
check that both tokenize alike); continuations are decoded with it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import torch

from toolkit.errors import UserError
from toolkit.evals.backend import AnswerRequest
from toolkit.evals.scoring import decode_all
from toolkit.export import llama_cpp_scoring
from toolkit.export.child_process import in_child
from toolkit.file_reading import sha256_of

T = TypeVar("T")


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, gguf: Path, n_ctx: int, tokenizer: Any):
        if importlib.util.find_spec("llama_cpp") is None:
            raise UserError("llama.cpp backend: llama-cpp-python is not installed (make llama-cpp)")
        self.gguf, self.n_ctx, self.tokenizer = gguf, n_ctx, tokenizer

    @property
    def max_length(self) -> int:
        return self.n_ctx

    @cached_property
    def fingerprint(self) -> str:
        return "gguf:" + sha256_of(self.gguf)[:16]

    def _ask(self, call: Callable[..., T], what: str, *args: Any) -> T:
        return in_child(call, self.gguf, self.n_ctx, *args, doing=f"{what} on {self.gguf}")

    def greedy_matches(self, requests: Sequence[AnswerRequest]) -> list[bool]:
        cases = [(list(prompt), list(answer)) for prompt, answer in requests]
        return self._ask(llama_cpp_scoring.greedy_matches, f"scoring {len(cases)} answers", cases)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[str]:
        rows = self._ask(llama_cpp_scoring.generate, f"generating {len(prompts)} continuations",
                         [list(prompt) for prompt in prompts], max_new_tokens, self.tokenizer.eos_token_id)
        return decode_all(self.tokenizer, rows)

    def token_losses(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        losses = self._ask(llama_cpp_scoring.token_losses, f"computing the losses of {len(sequences)} sequences",
                           [list(ids) for ids in sequences])
        return torch.from_numpy(losses)
