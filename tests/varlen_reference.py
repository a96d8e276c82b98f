"""A reference for PyTorch's varlen flash attention (``torch.nn.attention.varlen.varlen_attn``, CUDA only): sdpa
over one document at a time, on any device, so the varlen path (``toolkit.model.attention_varlen``) runs on CPU too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from toolkit.model.attention import TORCH_VARLEN
from toolkit.model.attention_varlen import register_torch_varlen, varlen_attention


def per_document(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seq: torch.Tensor, causal: bool,
                 scale: float | None, gqa: bool) -> torch.Tensor:
    """Attention of ``(tokens, heads, head_dim)`` tensors within each document that ``cu_seq`` bounds."""
    bounds = cu_seq.tolist()
    out = [F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                          is_causal=causal, scale=scale, enable_gqa=gqa).transpose(0, 1)
           for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(out)


def reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                          window_size=(-1, -1), enable_gqa=False):
    """``varlen_attn`` as torch 2.12+ takes it (causal as a window, native GQA), over :func:`per_document`."""
    assert torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32 and max_q == max_k
    assert max_q == int((cu_seq_q[1:] - cu_seq_q[:-1]).max())
    return per_document(query, key, value, cu_seq_q, tuple(window_size) == (-1, 0), scale, enable_gqa)


@contextmanager
def torch_varlen_on(device: str) -> Iterator[None]:
    """Within the block, the model attention ``torch_varlen`` runs PyTorch's kernel on CUDA
    (``register_torch_varlen``, as a run registers it) and :func:`reference_varlen_attn` elsewhere, through the
    same adapter; the registrations before are put back after."""
    previous = dict(AttentionInterface._global_mapping)
    if device == "cuda":
        register_torch_varlen()
    else:
        AttentionInterface.register(TORCH_VARLEN, varlen_attention(reference_varlen_attn))
    try:
        yield
    finally:
        AttentionInterface._global_mapping.clear()
        AttentionInterface._global_mapping.update(previous)
