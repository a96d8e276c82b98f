"""Batches of an evaluation's prompts: fixed-size slices, with a progress bar, sized by tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from toolkit.formatting.progress import progress_bar

T = TypeVar("T")


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def batched_with_progress(items: Sequence[T], size: int, desc: str, unit: str) -> Iterator[Sequence[T]]:
    """:func:`batched`, a progress bar named ``desc`` counting the items as each batch is done."""
    with progress_bar(total=len(items), desc=desc, unit=unit) as bar:
        for chunk in batched(items, size):
            yield chunk
            bar.update(len(chunk))


def batch_size_for(length: int, batch_tokens: int) -> int:
    """Rows of ``length`` tokens that fit in a ``batch_tokens`` forward pass (at least one)."""
    return max(1, batch_tokens // length)
