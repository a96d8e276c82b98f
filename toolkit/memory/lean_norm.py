"""Llama's RMSNorm without its float32 copies: the input kept as it came for the backward, which runs in chunks.

transformers' ``LlamaRMSNorm`` upcasts its input to float32 and autograd keeps that copy for the backward: in a bf16
run 4 bytes per hidden unit and token beside the input's 2, for each of a layer's two norms, and its backward makes
about three more float32 tensors of that size at once (at 512K tokens of Llama-3-8B, 8 GiB each).
:class:`LeanRMSNorm` computes the same forward (float32 per row, the normalised row cast back, then the weight), keeps
the input as it came and each row's float32 reciprocal RMS (4 bytes a token), and works through the rows
``CHUNK_ROWS`` at a time in both directions, so its float32 temporaries exist for one chunk at a time. Its backward is
the closed form of the same function, so gradients agree with autograd's up to float32 rounding. Float32 inputs (an
fp32 run: no copy is made) and calls without gradients go to the norm's own forward.

As in :mod:`toolkit.memory.tiled_mlp`, each norm's ``forward`` attribute is replaced; the module tree, parameter
names and the module's hooks (FSDP2, DeepSpeed) stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

CHUNK_ROWS = 8192
"""Rows (tokens) per chunk: float32 temporaries of 8192 x 4096 x 4 B = 128 MiB each at Llama-3-8B's width."""


class LeanRMSNorm(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x²) + eps)).to(x.dtype)`` with ``x`` in float32, as ``LlamaRMSNorm`` computes it."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, eps: float) -> Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        out = torch.empty(rows.shape, dtype=torch.result_type(weight, hidden), device=hidden.device)
        rstd = torch.empty(rows.shape[0], 1, dtype=torch.float32, device=hidden.device)
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            chunk = slice(start, start + CHUNK_ROWS)
            piece = rows[chunk].to(torch.float32)
            rstd[chunk] = torch.rsqrt(piece.pow(2).mean(-1, keepdim=True) + eps)
            out[chunk] = weight * (piece * rstd[chunk]).to(hidden.dtype)
        ctx.save_for_backward(hidden, weight, rstd)
        return out.view(*hidden.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        hidden, weight, rstd = ctx.saved_tensors
        rows, grads = hidden.reshape(-1, hidden.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            chunk = slice(start, start + CHUNK_ROWS)
            normed = rows[chunk].to(torch.float32) * rstd[chunk]
            if grad_weight is not None:
                grad_weight += (grads[chunk] * normed.to(hidden.dtype)).to(torch.float32).sum(0)
            if grad_rows is not None:
                # the gradient reaches the normalised row in its stored dtype, then float32, as through the casts
                grad_normed = (grads[chunk] * weight).to(hidden.dtype).to(torch.float32)
                mean = (grad_normed * normed).mean(-1, keepdim=True)
                grad_rows[chunk] = (rstd[chunk] * (grad_normed - normed * mean)).to(hidden.dtype)
        return (None if grad_rows is None else grad_rows.view_as(hidden),
                None if grad_weight is None else grad_weight.to(weight.dtype), None)


class LeanNormForward:
    """A norm's forward through :class:`LeanRMSNorm` for low-precision inputs under autograd; its own otherwise."""

    def __init__(self, norm: nn.Module, forward: Callable[[Tensor], Tensor]):
        self.norm, self.forward = norm, forward

    def __call__(self, hidden: Tensor) -> Tensor:
        if hidden.dtype == torch.float32 or not torch.is_grad_enabled():
            return self.forward(hidden)
        return LeanRMSNorm.apply(hidden, self.norm.weight, self.norm.variance_epsilon)


def enable_lean_rmsnorm(model: nn.Module) -> int:
    """Route every ``LlamaRMSNorm`` of ``model`` through :class:`LeanRMSNorm`; returns how many (calling it again
    changes nothing)."""
    norms: list[nn.Module] = [module for module in model.modules() if isinstance(module, LlamaRMSNorm)]
    for norm in norms:
        if not isinstance(norm.forward, LeanNormForward):
            norm.forward = LeanNormForward(norm, norm.forward)
    return len(norms)
