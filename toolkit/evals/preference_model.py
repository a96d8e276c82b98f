"""A model's preference between two responses: the probabilities of its three label tokens (A, B, tie) at the answer
position, each comparison asked in both orders and averaged.

:func:`toolkit.evals.scoring.label_probs` is the one call into the model (a batch of prompts -> three probabilities
each); everything else (layout, truncation, the second order) is plain data, so another backend replaces that function
alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.data.arena import ArenaRow
from toolkit.data.arena_prompt import arena_input, check_room, label_token_ids
from toolkit.data.tokens import pad_id
from toolkit.evals.batching import batched_with_progress
from toolkit.evals.preference_stats import unswapped

if TYPE_CHECKING:
    from toolkit.model.lora import CausalLM

Probs = tuple[float, float, float]


@dataclass(frozen=True)
class Predictions:
    """Each comparison's probabilities as asked (``probs``) and with A and B exchanged (``swapped``, in the order
    the model saw them), and how many inputs (of both orders) were cut to fit and by how many tokens."""

    probs: list[Probs]
    swapped: list[Probs]
    inputs: int
    cut_inputs: int
    cut_tokens: int

    @property
    def averaged(self) -> list[Probs]:
        """Both orders' probabilities in the original order, averaged (what a submission holds)."""
        pairs = [(p, unswapped(q)) for p, q in zip(self.probs, self.swapped, strict=True)]
        return [((p[0] + q[0]) / 2, (p[1] + q[1]) / 2, (p[2] + q[2]) / 2) for p, q in pairs]


def _template(tokenizer: Any) -> str | None:
    """The tokenizer's chat template (a run's ``final/`` holds the one it trained on); None for the plain layout."""
    return getattr(tokenizer, "chat_template", None) or None


def check_rows_fit(rows: Sequence[ArenaRow], tokenizer: Any, labels: Sequence[str], max_tokens: int,
                   fields: tuple[str, str] = ("label_tokens", "truncate_tokens")) -> None:
    """With the tokenizer, before the model: the labels are one token each and every comparison leaves room within
    ``max_tokens`` (a UserError naming the labels' or the limit's field of ``fields`` where not)."""
    label_token_ids(tokenizer, labels, fields[0])
    check_room(rows, tokenizer, _template(tokenizer), max_tokens, fields[1])


def predict_rows(model: CausalLM, tokenizer: Any, rows: Sequence[ArenaRow], labels: Sequence[str],
                 max_tokens: int, batch_size: int = 8, desc: str = "predict") -> Predictions:
    """Every row asked in both orders, ``batch_size`` prompts per model call, each cut to ``max_tokens``; a progress
    bar named ``desc`` counts the inputs."""
    from toolkit.evals.scoring import label_probs  # torch: only where a model is asked

    template = _template(tokenizer)
    ids = label_token_ids(tokenizer, labels)
    inputs = [arena_input(r, tokenizer, template, max_tokens) for row in rows for r in (row, row.swapped())]
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].ids))  # similar lengths share a batch
    probs: list[Probs] = [(0.0, 0.0, 0.0)] * len(inputs)
    for chunk in batched_with_progress(order, batch_size, desc, "input"):
        for i, p in zip(chunk, label_probs(model, [inputs[i].ids for i in chunk], ids, pad_id(tokenizer)),
                        strict=True):
            probs[i] = p
    cut = [given.cut for given in inputs if given.cut]
    return Predictions(probs[0::2], probs[1::2], len(inputs), len(cut), sum(cut))
