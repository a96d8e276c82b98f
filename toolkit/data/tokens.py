"""Token-id conventions shared by training and evaluation."""

from __future__ import annotations

from typing import Any


def pad_id(tokenizer: Any) -> int:
    """The id that pads rows: the tokenizer's pad token, else its eos token, else 0 (pads are never attended to)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def bos_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer itself puts in front of a text: ``[<|begin_of_text|>]`` for Llama 3 (and the tiny
    recipes' tokenizer), ``[]`` for ChatML models such as SmolLM2, whose bos token only opens chat turns."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []
