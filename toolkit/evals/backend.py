"""What evaluation asks of a model: a backend answers batches of requests built in the model's own token ids.

As in lm-evaluation-harness (a task builds requests, an ``LM`` answers them), a runner never calls the model: it asks
``EvalContext.backend``. The requests are those the built-in runners make: teacher-forced greedy exact match of an
answer after a prompt (``niah``, ``rope_compare``), greedy generation (``ruler``) and per-token losses
(``perplexity``). Backends: transformers (:mod:`toolkit.evals.transformers_backend`) and llama.cpp on a GGUF file
(:mod:`toolkit.export.llama_cpp_backend`, for ``export --check``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    import torch


class AnswerRequest(NamedTuple):
    """Would greedy decoding after ``prompt`` produce ``answer`` first?"""

    prompt: Sequence[int]
    answer: Sequence[int]


class Backend(Protocol):
    @property
    def name(self) -> str:
        """The runtime, e.g. ``transformers`` or ``llama.cpp``."""

    @property
    def max_length(self) -> int | None:
        """The longest prompt it takes, in tokens; ``None`` when it has no fixed limit. Suites are capped to it."""

    @property
    def fingerprint(self) -> str:
        """The identity of the weights as this backend runs them: recorded cells are reused only when it matches."""

    @property
    def tokenizer(self) -> Any:
        """The evaluated model's transformers tokenizer, in whose token ids requests are built."""

    def greedy_matches(self, requests: Sequence[AnswerRequest]) -> list[bool]:
        """For each request: would greedy decoding after its prompt produce its answer?"""

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[str]:
        """Greedy continuations as text (at most ``max_new_tokens`` each, cut after end of sequence; special tokens
        dropped)."""

    def token_losses(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """(batch, length - 1) float32 losses on the CPU of sequences of one length: entry i is the loss (negative
        log-likelihood) of token i + 1 given the tokens before it."""
