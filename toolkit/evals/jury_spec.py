"""The judges of a ``jury`` task (:mod:`toolkit.evals.jury`) and its data file: long-context prompts with reference
answers, judged by a panel.

The data is JSONL, one item a line: ``{"id": "q1", "context": "<long document>", "question": "...",
"reference": "...", "labelled": [{"answer": "...", "human": 1}]}``; ``id`` (default: the line number),
``context`` and ``labelled`` are optional. ``labelled`` holds answers a person judged (``human``: 0/1 for
``pooling: max_vote``, 1-5 for ``pooling: average``): the judges score them too, which measures the panel's
agreement with humans; they do not count in the evaluated model's score (whose own answers no person has seen).
Mistakes name ``file:line``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from toolkit.errors import UserError
from toolkit.file_reading import read_text
from toolkit.recipe.strict import NAME_PATTERN, Strict
from toolkit.recipe.yaml_files import resolve_relative, validation_message

Pooling = Literal["max_vote", "average"]
LABELS: dict[str, tuple[int, ...]] = {"max_vote": (0, 1), "average": (1, 2, 3, 4, 5)}
"""The verdicts (and human labels) of each pooling: 0/1 (incorrect/correct) or a 1-5 rating."""


class JudgeSpec(Strict):
    """One judge of the panel: a local transformers model, or an OpenAI-compatible chat-completions endpoint."""

    name: str = Field(pattern=NAME_PATTERN)
    model: str
    """Local: a folder (relative to the suite) or hub id, loaded once. HTTP: the model name the server expects."""
    url: str | None = Field(None, pattern=r"^https?://")
    """Base URL of an OpenAI-compatible server, e.g. ``http://127.0.0.1:8080/v1`` (vLLM, llama.cpp's
    llama-server) or ``https://api.openai.com/v1``; ``None``: a local transformers judge."""
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """NAME of the environment variable holding the API key (sent as a bearer token, never written anywhere)."""
    price_input: NonNegativeFloat = 0.0
    """USD per 1M prompt tokens, for the estimated cost."""
    price_output: NonNegativeFloat = 0.0
    """USD per 1M completion tokens."""
    max_tokens: PositiveInt = 16
    """Longest verdict generated."""
    max_attempts: int = Field(4, ge=1, le=20)
    """HTTP: tries per call (timeouts, connection errors, 408, 429 and 5xx are retried)."""
    timeout_s: PositiveFloat = 60.0
    """HTTP: seconds one attempt may take."""
    backoff_s: NonNegativeFloat = 1.0
    """HTTP: wait before the 2nd attempt, doubling after each; a ``Retry-After`` header takes precedence."""
    max_wait_s: NonNegativeFloat = 60.0
    """HTTP: the longest single wait between attempts."""
    batch_size: PositiveInt = 8
    """Local: verdicts generated per forward batch."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Local: weights' dtype."""
    choose: bool = False
    """Local: instead of generating, answer with the verdict (``True``/``False``, ``1``-``5``, ``A``/``B``/``tie``)
    whose first token the model finds most likely next: one forward pass, and always a verdict, for small models
    that do not keep to the reply format."""

    @model_validator(mode="after")
    def _local_or_http(self) -> JudgeSpec:
        if self.api_key_env and not self.url:
            raise ValueError("api_key_env is for HTTP judges: give url too")
        if self.choose and self.url:
            raise ValueError("choose is for local judges (an HTTP judge generates its reply)")
        return self


def _unique_names(judges: list[JudgeSpec]) -> list[JudgeSpec]:
    names = [judge.name for judge in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique (got {', '.join(names)})")
    return judges


Judges = Annotated[list[JudgeSpec], Field(min_length=1), AfterValidator(_unique_names)]
"""A panel: at least one judge, names unique (they key the votes and the results)."""


def resolve_judges(judges: list[JudgeSpec], base: Path) -> None:
    """Local judges' model folders relative to the suite's folder ``base`` (hub ids and HTTP models stay)."""
    for judge in judges:
        if judge.url is None:
            judge.model = resolve_relative(judge.model, base) or judge.model


class LabelledAnswer(Strict):
    """An answer to the item's question with a person's verdict on it."""

    answer: str = Field(min_length=1)
    human: int


class JuryItem(Strict):
    """One line of a jury's data."""

    id: str = ""
    context: str = ""
    question: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    labelled: list[LabelledAnswer] = []


def read_items(path: Path, pooling: Pooling) -> list[JuryItem]:
    """The items of a jury's JSONL, checked; a UserError naming ``file:line`` and the field otherwise."""
    items: list[JuryItem] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = JuryItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not a JSON object: {exc.msg}") from None
        except ValidationError as exc:
            raise UserError(validation_message(exc, f"{path}:{number}")) from None
        for i, labelled in enumerate(item.labelled):
            if labelled.human not in LABELS[pooling]:
                raise UserError(f"{path}:{number}: labelled[{i}].human: must be one of {LABELS[pooling]} for pooling "
                                f"{pooling} (got {labelled.human})")
        items.append(item if item.id else item.model_copy(update={"id": str(number)}))
    if not items:
        raise UserError(f"{path}: no items")
    if len({item.id for item in items}) != len(items):
        raise UserError(f"{path}: ids must be unique")
    return items
