"""What a judge is to a jury task: asked prompts, it gives one :class:`Reply` each (its backends:
:mod:`toolkit.evals.judges`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from toolkit.evals.jury_spec import JudgeSpec


@dataclass(frozen=True)
class Reply:
    """One judge call: its text (``None`` when it failed), why it failed, and what it cost."""

    text: str | None
    error: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class Judge(Protocol):
    spec: JudgeSpec

    def ask(self, prompts: list[str], verdicts: tuple[str, ...] = ()) -> list[Reply]:
        """One reply per prompt; ``verdicts``: the replies the prompt asks for (a local judge with ``choose``
        answers one of them)."""
        ...
