"""Token-id conventions shared by training and evaluation."""

from __future__ import annotations

from typing import Any


def pad_id(tokenizer: Any) -> int:
    """The id that pads rows: the tokenizer's pad token, else its eos token, else 0 (pads are never attended to)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
