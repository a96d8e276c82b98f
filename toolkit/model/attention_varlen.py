"""PyTorch's varlen flash attention (``torch.nn.attention.varlen.varlen_attn``, CUDA) as a transformers attention
implementation: packed rows at flash speed, in memory linear in their length, without the flash-attn package.

It is registered through transformers' ``AttentionInterface`` under :data:`toolkit.model.attention.TORCH_VARLEN`.
transformers builds no mask for an implementation that has no mask function, and hands every attention call the
``position_ids`` and the per-batch kwargs the objective passes (the document boundaries, computed once per forward
by :mod:`toolkit.model.segments`); without those the documents are where the position ids restart. Training only:
evaluation needs padding masks and a KV cache, so :func:`toolkit.model.loading.evaluating` switches the model to
sdpa for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface

from toolkit.model.attention import TORCH_VARLEN, cudnn_for_one_document_rows
from toolkit.model.segments import ONE_DOCUMENT_ROWS, Segments

Kernel = Callable[..., Any]
"""``varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, ...)`` on ``(tokens, heads, head_dim)`` tensors."""
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""sdpa's backends for rows of one document each, in order: cuDNN where it takes the shapes, then the others."""


def cudnn_here(query: torch.Tensor) -> bool:
    """:func:`toolkit.model.attention.cudnn_for_one_document_rows` for the GPU and dtype ``query`` is on."""
    capability = torch.cuda.get_device_capability(query.device) if query.is_cuda else None
    return cudnn_for_one_document_rows(capability, query.dtype)


def causal_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Causal attention over whole rows (one document each) by sdpa, cuDNN first, K/V heads grouped; ``(B, L, H,
    D)`` as transformers takes it."""
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2)


def varlen_attention(kernel: Kernel, one_document: Callable[[torch.Tensor], bool] = cudnn_here,
                     ) -> Callable[..., tuple[torch.Tensor, None]]:
    """A transformers attention function over ``kernel``, adapted to its signature: causal by ``window_size=(-1, 0)``
    (torch >= 2.11) or ``is_causal=True`` (2.10); grouped K/V heads natively with ``enable_gqa`` (>= 2.12), else
    repeated; the softmax scale passed where ``scale`` is accepted (>= 2.11), else it must be the default.

    The document boundaries come from the per-batch kwargs (:class:`toolkit.model.segments.Segments`), else from
    the position ids. Rows of one whole document each go to :func:`causal_sdpa` where ``one_document(query)``
    says so (on a GPU: :func:`cudnn_here`)."""
    accepted = inspect.signature(kernel).parameters
    causal: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in accepted else {"is_causal": True}

    def forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                max_length_q: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
            raise ValueError(f"{TORCH_VARLEN} attention trains on whole rows with position_ids, without an attention "
                             "mask or KV cache (evaluate with sdpa)")
        if dropout:
            raise ValueError(f"{TORCH_VARLEN} attention has no dropout (attention_dropout {dropout})")
        if kwargs.get(ONE_DOCUMENT_ROWS) and one_document(query):
            return causal_sdpa(query, key, value, scaling), None
        batch, heads, length, dim = query.shape
        kv_heads = key.shape[1]
        q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
        options = dict(causal)
        if kv_heads != heads and "enable_gqa" in accepted:
            options["enable_gqa"] = True
        elif kv_heads != heads:
            k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
        if "scale" in accepted:
            options["scale"] = scaling
        elif scaling is not None and abs(scaling - dim**-0.5) > 1e-9 * scaling:
            raise ValueError(f"this torch's varlen_attn has no scale argument, and the model scales by {scaling}")
        if cu_seq_lens_q is None or max_length_q is None:
            segments = Segments.of(position_ids)
            cu_seq_lens_q, max_length_q = segments.cu_seqlens, segments.longest
        out = kernel(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, **options)
        return out.reshape(batch, length, heads, dim), None

    return forward


def register_torch_varlen() -> None:
    """Register PyTorch's ``varlen_attn`` with transformers as :data:`toolkit.model.attention.TORCH_VARLEN`."""
    from torch.nn.attention.varlen import varlen_attn

    AttentionInterface.register(TORCH_VARLEN, varlen_attention(varlen_attn))
