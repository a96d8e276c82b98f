"""What every task runner receives: the backend that answers its requests, the tokenizer's sentence cache and the
output place."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.data.needle import ChatFrame, SentenceTokens
from toolkit.errors import UserError
from toolkit.evals.backend import Backend

if TYPE_CHECKING:
    import torch

    from toolkit.evals.transformers_backend import TransformersBackend
    from toolkit.model.lora import CausalLM

_SENTENCE_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sentence_tokens(tokenizer) -> SentenceTokens:
    """One sentence cache per tokenizer, kept across suites and tags (filler is tokenised once)."""
    if tokenizer not in _SENTENCE_CACHES:
        _SENTENCE_CACHES[tokenizer] = SentenceTokens(tokenizer)
    return _SENTENCE_CACHES[tokenizer]


def chat_frame(tokenizer, where: str) -> ChatFrame:
    """``tokenizer``'s chat template around a haystack prompt; a UserError naming ``where`` when it has none."""
    try:
        return ChatFrame.of(tokenizer)
    except ValueError as exc:
        raise UserError(f"{where}: chat: true, but {exc} (ask without it for base models)") from None


@dataclass
class EvalContext:
    backend: Backend
    """Answers the runner's requests (:mod:`toolkit.evals.backend`)."""
    folder: Path
    """``<out>/<tag>``: where the suite's JSON and plots go."""
    suite: str
    model_name: str
    tokens: SentenceTokens = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sentence_tokens(self.tokenizer)

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @cached_property
    def chat_frame(self) -> ChatFrame:
        """The tokenizer's chat template around a haystack prompt (tasks with ``chat: true``)."""
        return chat_frame(self.tokenizer, f"suite {self.suite}")

    def _transformers(self) -> TransformersBackend:
        from toolkit.evals.transformers_backend import TransformersBackend  # torch: only a model's task asks

        if not isinstance(self.backend, TransformersBackend):
            raise UserError(f"suite {self.suite}: this task type needs a transformers model, not {self.backend.name}")
        return self.backend

    @property
    def model(self) -> CausalLM:
        """The transformers model, for the task types whose machinery needs more than the backend's requests
        (``rope_compare``, ``lm_eval``, ``preference``)."""
        return self._transformers().model

    @property
    def device(self) -> torch.device:
        """The transformers model's device: where the jury's local judges load."""
        return self._transformers().device

    def judges_log(self, task_key: str, fresh: bool) -> Path:
        """Where a judged task (``jury``, ``jury_pairwise``) appends its judges' raw outputs,
        ``<folder>/<suite>-<task>-judges.jsonl``; emptied when ``fresh`` (no cell recorded yet)."""
        path = self.folder / f"{self.suite}-{task_key}-judges.jsonl"
        if fresh:
            path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def plot_path(self, task_key: str) -> Path:
        """Where a task's plot goes, ``<folder>/<suite>-<task>.png``."""
        return self.folder / f"{self.suite}-{task_key}.png"
