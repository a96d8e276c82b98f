"""PyTorch's varlen flash attention (``torch.nn.attention.varlen.varlen_attn``, CUDA) as a transformers attention
implementation: packed rows at flash speed, in memory linear in their length, without the flash-attn package.

It is registered through transformers' ``AttentionInterface`` under :data:`toolkit.model.attention.TORCH_VARLEN`.
transformers builds no mask for an implementation that has no mask function, and hands every attention call the
``position_ids``; the documents are where those restart. Training only: evaluation needs padding masks and a KV
cache, so :func:`toolkit.model.loading.evaluating` switches the model to sdpa for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

from toolkit.model.attention import TORCH_VARLEN

Kernel = Callable[..., Any]
"""``varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, ...)`` on ``(tokens, heads, head_dim)`` tensors."""


def cu_seqlens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Document boundaries over the B·L tokens of ``position_ids`` (``[0, end_1, ..., B·L]``, int32) and the
    longest document. A document starts where the position does not count up by one, and at every row start."""
    starts = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1) != 1
    starts[:, 0] = True
    offsets = starts.reshape(-1).nonzero().flatten()
    bounds = torch.cat([offsets, offsets.new_tensor([position_ids.numel()])]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def varlen_attention(kernel: Kernel) -> Callable[..., tuple[torch.Tensor, None]]:
    """A transformers attention function over ``kernel``, adapted to its signature: causal by ``window_size=(-1, 0)``
    (torch >= 2.11) or ``is_causal=True`` (2.10); grouped K/V heads natively with ``enable_gqa`` (>= 2.12), else
    repeated; the softmax scale passed where ``scale`` is accepted (>= 2.11), else it must be the default."""
    accepted = inspect.signature(kernel).parameters
    causal: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in accepted else {"is_causal": True}

    def forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
            raise ValueError(f"{TORCH_VARLEN} attention trains on whole rows with position_ids, without an attention "
                             "mask or KV cache (evaluate with sdpa)")
        if dropout:
            raise ValueError(f"{TORCH_VARLEN} attention has no dropout (attention_dropout {dropout})")
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
        bounds, longest = cu_seqlens(position_ids)
        out = kernel(q, k, v, bounds, bounds, longest, longest, **options)
        return out.reshape(batch, length, heads, dim), None

    return forward


def register_torch_varlen() -> None:
    """Register PyTorch's ``varlen_attn`` with transformers as :data:`toolkit.model.attention.TORCH_VARLEN`."""
    from torch.nn.attention.varlen import varlen_attn

    AttentionInterface.register(TORCH_VARLEN, varlen_attention(varlen_attn))
