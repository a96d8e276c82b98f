"""Scoring primitives on a transformers model (teacher-forced greedy exact match, batched greedy generation, per-token
losses, a preference's label probabilities), which the transformers backend (:mod:`toolkit.evals.transformers_backend`),
the jury's local judges and the preference predictor call.

All of them work on token ids built in the evaluated model's own tokenizer and never reload the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from toolkit.model.lora import CausalLM

_LOGIT_CHUNK = 1024


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def greedy_matches(model: torch.nn.Module, rows: Sequence[tuple[Sequence[int], Sequence[int]]],
                   pad_id: int) -> list[bool]:
    """For each (prompt, answer): would greedy decoding after ``prompt`` produce ``answer`` first?

    Computed teacher-forced in ONE forward pass over ``prompt + answer``: greedy decoding emits
    argmax(logits at the last prompt position); if that equals answer[0], its next context is exactly
    prompt + answer[:1], which is the teacher-forced context at the next position, and so on by
    induction; at the first answer position where the argmax differs, greedy decoding emits that other
    token instead. So "argmax at every answer position equals the answer token" holds if and only if greedy
    decoding produces the answer, and one forward pass replaces len(answer) decoding steps. (In low
    precision, a near-tie can round differently in a KV-cached decode; the full forward is the reference.)

    Rows are right-padded and no attention mask is passed: with causal attention a real token never sees
    the pads after it, and position ids stay 0..n-1 as in an unpadded run. Only the logits of the answer
    positions (the union over the batch) are computed (``logits_to_keep``).
    """
    if not rows:
        return []
    device = model_device(model)
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for r, (prompt, answer) in enumerate(rows):
        ids[r, :len(prompt) + len(answer)] = torch.tensor(list(prompt) + list(answer))
    first = min(len(p) for p, _ in rows) - 1
    last = max(len(p) + len(a) for p, a in rows) - 1
    keep = torch.arange(first, last, device=device)
    logits = model(input_ids=ids.to(device), logits_to_keep=keep, use_cache=False).logits
    predicted = logits.argmax(-1).cpu()
    out = []
    for r, (prompt, answer) in enumerate(rows):
        start = len(prompt) - 1 - first
        out.append(predicted[r, start:start + len(answer)].tolist() == list(answer))
    return out


@torch.inference_mode()
def generate_ids(model: CausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int,
                 eos_id: int | None = None) -> list[list[int]]:
    """Greedy continuations of a batch of prompts (left-padded), each cut after its first eos."""
    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt):] = torch.tensor(list(prompt))
        mask[r, width - len(prompt):] = 1
    # transformers' typing of generate fails under mypy: PreTrainedModel lacks it (only the *ForCausalLM classes
    # mix GenerationMixin in), and GenerationMixin.generate types self with a Protocol no model class matches
    out = model.generate(  # type: ignore[operator]
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=pad_id, eos_token_id=eos_id, temperature=None, top_p=None, top_k=None)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[:row.index(eos_id) + 1] if eos_id is not None and eos_id in row else row)
    return rows


def generate_greedy(model: CausalLM, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    pad_id: int) -> list[str]:
    """Greedy continuations as text (special tokens dropped)."""
    return decode_all(tokenizer, generate_ids(model, prompts, max_new_tokens, pad_id, tokenizer.eos_token_id))


def decode_all(tokenizer, rows: Sequence[Sequence[int]]) -> list[str]:
    """Generated token ids as text (special tokens dropped)."""
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


@torch.inference_mode()
def token_losses(model: CausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """(batch, length - 1) losses: entry i is the loss of token i + 1 given the tokens before it.

    Logits are computed in chunks from the decoder's last hidden state, so the full (length x vocabulary) logits
    never exist at once."""
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    losses = []
    for start in range(0, input_ids.shape[1] - 1, _LOGIT_CHUNK):
        stop = min(start + _LOGIT_CHUNK, input_ids.shape[1] - 1)
        logits = head(hidden[:, start:stop]).float()
        losses.append(F.cross_entropy(logits.transpose(1, 2), input_ids[:, start + 1:stop + 1], reduction="none"))
    return torch.cat(losses, dim=1)


@torch.inference_mode()
def label_probs(model: CausalLM, prompts: Sequence[Sequence[int]], label_ids: Sequence[int],
                pad: int) -> list[tuple[float, float, float]]:
    """For each prompt (token ids ending at the answer position), the softmax over the label tokens' logits of
    the next token: (A, B, tie) for a preference (:mod:`toolkit.evals.preference_model`)."""
    length = max(len(ids) for ids in prompts)
    device = model_device(model)
    ids = torch.tensor([list(p) + [pad] * (length - len(p)) for p in prompts], device=device)
    mask = torch.tensor([[1] * len(p) + [0] * (length - len(p)) for p in prompts], device=device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = hidden[torch.arange(len(prompts), device=device), torch.tensor([len(p) - 1 for p in prompts],
                                                                          device=device)]
    logits = model.get_output_embeddings()(last).float()[:, list(label_ids)]
    return [(a, b, tie) for a, b, tie in logits.softmax(dim=-1).tolist()]
