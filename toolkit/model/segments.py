"""What the decoder is given for a micro-batch of packed rows, computed once per forward for every layer.

Packing ends a row with a padding tail (ignored labels). Kernels that keep documents apart by segments (varlen,
flex, flash: :data:`SPLIT_PADDING`) get it as segments of :data:`PADDING_SEGMENT` tokens of its own: no real token
attends to it, it attends to no real token, and its attention work is linear in its length instead of joining the
last document's square. The others (sdpa and eager, which need a dense mask for packed rows) get it continuing the
last document, so a row holding one document runs causal without a mask. The varlen kernels get the document
boundaries (``cu_seqlens`` and the longest document) as transformers' flash-attention kwargs, computed here from
one copy of the positions to the CPU, instead of in every layer from the positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from toolkit.data.packing import IGNORE_INDEX
from toolkit.model.attention import FLATTENED, VARLEN_KWARGS

PADDING_SEGMENT = 128
"""Length of the segments a padding tail is cut into: flash attention's tile and flex attention's block, so each
segment costs one tile of work."""
SPLIT_PADDING = (*VARLEN_KWARGS, "flex_attention")
"""Kernels that keep segments apart without a dense mask: they get the padding tail as segments of its own."""
ONE_DOCUMENT_ROWS = "one_document_rows"
"""The kwarg telling the varlen kernel that every row is one whole document (no packing, no padding)."""


def _padding_tail(position_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tail, start)``: which tokens are a row's padding tail (its last segment when all its labels are ignored
    and it is not the whole row) and, per row, where that segment starts."""
    length = position_ids.shape[-1]
    starts = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1) != 1
    segment = starts.cumsum(-1)
    last = segment == segment[:, -1:]
    padding = ((labels == IGNORE_INDEX) | ~last).all(-1, keepdim=True) & (segment[:, -1:] > 0)
    return last & padding, length - last.sum(-1, keepdim=True)


def continue_padding_tail(position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``position_ids`` with each row's padding tail continuing the document before it: no loss changes, and a row
    holding one document then counts up without a restart, which sdpa runs causal without a mask."""
    tail, start = _padding_tail(position_ids, labels)
    before = position_ids.gather(-1, (start - 1).clamp(min=0))
    columns = torch.arange(position_ids.shape[-1], device=position_ids.device)
    return torch.where(tail, before + 1 + columns - start, position_ids)


def split_padding_tail(position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``position_ids`` with each row's padding tail restarting every :data:`PADDING_SEGMENT` tokens: segments of
    their own, so the kernel's work on padding is linear in its length. No real token's output changes."""
    tail, start = _padding_tail(position_ids, labels)
    columns = torch.arange(position_ids.shape[-1], device=position_ids.device)
    return torch.where(tail, (columns - start) % PADDING_SEGMENT, position_ids)


@dataclass(frozen=True)
class Segments:
    """Document boundaries over the B·L tokens of a micro-batch: what every layer's varlen kernel needs."""

    cu_seqlens: torch.Tensor
    """``[0, end_1, ..., B·L]``, int32, on the rows' device."""
    longest: int
    one_per_row: bool
    """Every row is one segment: one document filling it, no padding."""

    @classmethod
    def of(cls, position_ids: torch.Tensor) -> Segments:
        """From ``position_ids`` ``[B, L]``: a segment starts where the position does not count up by one and at
        every row start. One copy to the CPU (a single sync); the boundaries go back without waiting."""
        positions = position_ids.detach().to("cpu")
        starts = torch.diff(positions, dim=-1, prepend=positions[:, :1] - 1) != 1
        starts[:, 0] = True
        offsets = starts.reshape(-1).nonzero().flatten()
        bounds = torch.cat([offsets, offsets.new_tensor([positions.numel()])]).to(torch.int32)
        one_per_row = len(bounds) == positions.shape[0] + 1
        return cls(bounds.to(position_ids.device, non_blocking=True), int(bounds.diff().max()), one_per_row)

    def kernel_kwargs(self) -> dict[str, Any]:
        """transformers' flash-attention kwargs, which it hands every attention call unchanged."""
        return {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens, "max_length_q": self.longest,
                "max_length_k": self.longest, ONE_DOCUMENT_ROWS: self.one_per_row}


class DecoderInputs(NamedTuple):
    """The rows, positions and per-batch attention kwargs the decoder is called with."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: Segments | None

    def kernel_kwargs(self) -> dict[str, Any]:
        return self.segments.kernel_kwargs() if self.segments is not None else {}


def decoder_rows(implementation: str, input_ids: torch.Tensor,
                 position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows to give the decoder: for :data:`FLATTENED` kernels one row of B·L tokens (every row starts a new
    document at position 0, so documents stay apart), otherwise the rows as they are."""
    if implementation in FLATTENED and input_ids.shape[0] > 1:
        return input_ids.reshape(1, -1), position_ids.reshape(1, -1)
    return input_ids, position_ids


def decoder_inputs(implementation: str, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   labels: torch.Tensor) -> DecoderInputs:
    """What ``implementation`` gets for packed rows: the padding tail split into segments of its own
    (:data:`SPLIT_PADDING`) or continued (sdpa, eager and others); rows flattened for flash-attn; the boundaries
    once for the varlen kernels."""
    tail = split_padding_tail if implementation in SPLIT_PADDING else continue_padding_tail
    rows, positions = decoder_rows(implementation, input_ids, tail(position_ids, labels))
    segments = Segments.of(positions) if implementation in VARLEN_KWARGS else None
    return DecoderInputs(rows, positions, segments)
