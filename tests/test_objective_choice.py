"""The arena objective: at each labelled position, the cross-entropy over the label tokens' logits alone, through
the one training objective (``objective_loss``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.micro_models import micro_llama
from toolkit.data.batches import collate
from toolkit.data.packing import IGNORE_INDEX, Document, pack_rows
from toolkit.errors import RunFailure
from toolkit.training.objective import CausalLMObjective, objective_loss

CHOICES = (5, 9, 17)


def _batch(answers: list[int]):
    docs = [Document(list(range(20, 30 + i)) + [answer], [IGNORE_INDEX] * (10 + i) + [answer])
            for i, answer in enumerate(answers)]
    return docs, collate(list(pack_rows(docs, 64, "pack", pad_id=0)))


def test_loss_is_the_softmax_over_the_label_tokens() -> None:
    model = micro_llama("sdpa", 64)
    docs, batch = _batch([9, 17, 5])
    total, count = objective_loss(CausalLMObjective(model, None, CHOICES), batch)
    expected = []
    for doc in docs:
        logits = model(input_ids=torch.tensor([doc.input_ids[:-1]])).logits[0, -1, list(CHOICES)]
        expected.append(F.cross_entropy(logits[None], torch.tensor([CHOICES.index(doc.labels[-1])])))
    assert int(count) == 3
    torch.testing.assert_close(total, torch.stack(expected).sum(), atol=1e-5, rtol=1e-5)
    plain, _ = objective_loss(CausalLMObjective(model, None), batch)
    assert float(plain.detach()) > float(total.detach())  # the full vocabulary spreads more mass than three tokens


def test_a_label_outside_the_choices_fails() -> None:
    _, batch = _batch([9, 42])
    with pytest.raises(RunFailure, match="not one of the label tokens"):
        objective_loss(CausalLMObjective(micro_llama("sdpa", 64), None, CHOICES), batch)
