"""Causal-LM cross-entropy whose full-vocabulary logits never exist for the whole sequence.

Peak memory. For ``T`` target positions, hidden size ``H`` and vocabulary ``V`` the plain loss holds the
logits ``T x V`` (bf16 from the head, plus a float32 copy for the softmax: 6 bytes per element) in the
forward and again as their gradient in the backward; for Llama 3 (V = 128256) at T = 1M tokens that is about
770 GB. The chunked loss computes each chunk's logits inside ``torch.utils.checkpoint`` and keeps only the
chunk's scalar loss, so the graph stores nothing of size ``V`` per token: the peak is one chunk's logits
``chunk_size x V x (2 + 4 + 4)`` bytes (head output, float32 copy, its gradient) in forward or backward,
e.g. 4096 x 128256 x 10 B = 5.3 GB, independent of the sequence length. Positions whose label is ignored
(-100) are dropped before the head, so answer-only training computes logits for the answer tokens alone.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toolkit.data.packing import IGNORE_INDEX

LIGER, CHUNKED, PLAIN = "liger", "chunked", "plain"
"""The loss kernels: Liger's fused one, the chunked head, the plain head over the whole row (no chunk size)."""
FusedLoss = Callable[[Tensor, Tensor], Tensor]  # (hidden, labels) of target positions -> loss sum


def causal_lm_loss(hidden: Tensor, lm_head: nn.Module, labels: Tensor, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """Sum of next-token losses and the number of target tokens.

    ``hidden`` is ``[B, L, H]`` (the decoder's last hidden states), ``labels`` is ``[B, L]`` unshifted (HF
    convention: the logits at position t predict ``labels[t + 1]``; -100 is ignored). Returns a 0-dim float32
    loss sum that carries grad and a 0-dim count; divide one by the other (summed over micro-batches and ranks)
    for the mean. ``chunk_size=None`` is the plain loss; otherwise the head runs ``chunk_size`` positions at a
    time under checkpoint (or Liger's fused kernel where :func:`loss_kernel` chooses it, see :func:`target_loss`).
    """
    return shifted_lm_loss(hidden[:, :-1, :], lm_head, labels[:, 1:], chunk_size)


def shifted_lm_loss(hidden: Tensor, lm_head: nn.Module, shift_labels: Tensor,
                    chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """:func:`causal_lm_loss` for labels already aligned with ``hidden`` (position t predicts
    ``shift_labels[t]``), as sequence-parallel data loaders provide them (``batch["shift_labels"]``)."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = shift_labels.reshape(-1).to(hidden.device)
    targets = flat_labels != IGNORE_INDEX
    count = targets.sum()
    if chunk_size is None:
        logits = lm_head(flat_hidden).float()
        return F.cross_entropy(logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"), count
    kept_hidden, kept_labels = flat_hidden[targets], flat_labels[targets]
    fused = partial(_liger_loss, lm_head) if _liger_applies(lm_head, kept_hidden) else None
    return target_loss(kept_hidden, lm_head, kept_labels, chunk_size, fused), count


def target_loss(hidden: Tensor, lm_head: nn.Module, labels: Tensor, chunk_size: int,
                fused: FusedLoss | None = None) -> Tensor:
    """Loss sum over ``[N, H]`` hidden states whose ``[N]`` labels are all targets: ``fused`` (Liger's kernel) where
    given, else the head ``chunk_size`` positions at a time under checkpoint. With no target at all (routine for a
    Ulysses or context-parallel slice under ``loss_on: answer``) the chunked loss runs even so: Liger's kernel divides
    by its number of rows (ZeroDivisionError on none, liger-kernel 0.8.5), the chunked loss gives exactly 0 with zero
    gradients, the head in the graph."""
    if fused is not None and labels.numel() > 0:
        return fused(hidden, labels)
    total = hidden.new_zeros((), dtype=torch.float32)
    for chunk in range(_chunk_count(lm_head, labels.numel(), chunk_size)):
        start, stop = chunk * chunk_size, (chunk + 1) * chunk_size  # chunks past the end are empty
        total = total + checkpoint(_chunk_loss, lm_head, hidden[start:stop], labels[start:stop], use_reentrant=False)
    return total


def _chunk_count(lm_head: nn.Module, targets: int, chunk_size: int) -> int:
    """Head calls for ``targets`` positions: at least one (it keeps the head in the graph). Under DeepSpeed ZeRO-3
    every call gathers the head weight with the other processes, so all of them make the largest count any needs
    (processes whose rows hold different numbers of targets would otherwise wait for each other forever)."""
    count = max(1, -(-targets // chunk_size))
    if _partitioned(lm_head) and torch.distributed.is_initialized():
        agreed = torch.tensor([count], device=next(lm_head.parameters()).device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        count = int(agreed.item())
    return count


def _partitioned(lm_head: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the head weight (an empty placeholder outside the head's forward)."""
    weight = getattr(lm_head, "weight", None)
    return weight is not None and (weight.numel() == 0 or hasattr(weight, "ds_id"))


def _chunk_loss(lm_head: nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(lm_head(hidden).float(), labels, reduction="sum")


def loss_kernel(lm_head: nn.Module, on_cuda: bool) -> tuple[str, str]:
    """``(kernel, reason)``: which chunked loss runs for ``lm_head`` (on a CUDA device or not), and why.

    Liger's fused kernel reads the head weight directly, outside the head's forward: under DeepSpeed ZeRO-3 that
    weight is an empty placeholder there, so the chunked loss, which calls the head (ZeRO-3's hooks gather it), runs.
    """
    if not on_cuda:
        return CHUNKED, "no CUDA device"
    if type(lm_head) is not nn.Linear:
        return CHUNKED, f"the head is a {type(lm_head).__name__}, not a plain Linear that Liger's kernel reads"
    if _partitioned(lm_head):
        return CHUNKED, "the head weight is partitioned by DeepSpeed ZeRO-3; Liger reads it directly"
    if importlib.util.find_spec("liger_kernel") is None:
        return CHUNKED, "liger-kernel is not installed"
    return LIGER, "liger-kernel's fused linear cross-entropy"


def _liger_applies(lm_head: nn.Module, hidden: Tensor) -> TypeGuard[nn.Linear]:
    return loss_kernel(lm_head, hidden.is_cuda)[0] == LIGER


def _liger_loss(lm_head: nn.Linear, hidden: Tensor, labels: Tensor) -> Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_fn(lm_head.weight, hidden, labels, lm_head.bias).float()
