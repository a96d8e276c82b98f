"""Choose the attention kernel (transformers' ``attn_implementation``) for a device and dtype, with the reason why.

Training rows are packed: documents side by side, ``position_ids`` restarting at each. Kernels keep them apart
differently, and only some do so in memory linear in the row length:

- ``flash_attention_2`` (the flash-attn package): varlen over documents, at batch size 1 only, so the objective
  flattens a batch of rows into one row of B·L tokens (:func:`decoder_rows`).
- ``torch_varlen``: PyTorch's own varlen flash attention (:mod:`toolkit.model.attention_varlen`), any batch size.
- ``flex_attention``: a document-causal BlockMask that transformers builds from the position ids.
- ``sdpa`` and ``eager``: causal without a mask for one document per row; a row holding several documents makes
  transformers build a dense ``[B,1,L,L]`` mask (:func:`dense_mask_bytes`).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import NamedTuple

import torch

from toolkit.data.packing import IGNORE_INDEX
from toolkit.errors import UserError

TORCH_VARLEN = "torch_varlen"
"""The name :mod:`toolkit.model.attention_varlen` registers PyTorch's varlen flash attention under."""
HALF = (torch.bfloat16, torch.float16)
FLATTENED = ("flash_attention_2",)
"""Kernels that keep packed documents apart at batch size 1 only: the objective gives them one row of B·L tokens."""
DENSE_MASK = ("sdpa", "eager")
"""Kernels that reach rows holding several documents through a dense ``[B,1,L,L]`` mask."""


def flash_attn_importable() -> bool:
    """Whether the ``flash_attn`` package (CUDA or ROCm build) imports."""
    try:
        importlib.import_module("flash_attn")
    except Exception:  # a broken build raises anything from ImportError to OSError/RuntimeError
        return False
    return True


def _torch_varlen_usable() -> bool:
    """PyTorch's varlen flash attention: the module exists, CUDA (not ROCm) with flash kernels, sm80 or newer."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None or torch.version.hip:
        return False
    if not torch.cuda.is_available() or not torch.backends.cuda.is_flash_attention_available():
        return False
    return torch.cuda.get_device_capability()[0] >= 8


@dataclass(frozen=True)
class KernelSupport:
    """What this installation offers on a GPU; :meth:`detect` reads it, tests pass their own."""

    flash_attn: bool
    torch_varlen: bool
    flex: bool
    rocm: str | None = None
    """HIP version on a ROCm build of PyTorch, else None (CUDA)."""

    @classmethod
    def detect(cls) -> KernelSupport:
        flex = (importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
                and importlib.util.find_spec("triton") is not None)  # flex compiles to triton kernels on a GPU
        return cls(flash_attn=flash_attn_importable(), torch_varlen=_torch_varlen_usable(), flex=flex,
                   rocm=torch.version.hip)

    @property
    def gpu(self) -> str:
        return f"ROCm {self.rocm}" if self.rocm else "CUDA"


class AttentionChoice(NamedTuple):
    implementation: str
    reason: str


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _auto_on_gpu(dtype: torch.dtype, training: bool, support: KernelSupport) -> AttentionChoice:
    """flash-attn, else PyTorch varlen, else flex, else sdpa (see the module docstring); fp32 never takes flash."""
    half, name = dtype in HALF, _dtype_name(dtype)
    if half and support.flash_attn:
        how = "packed rows flattened to one row for varlen" if training else "padding masks unpadded"
        return AttentionChoice("flash_attention_2", f"auto: flash-attn installed, {name} on {support.gpu}; {how}")
    why_not = [f"{name} never takes flash" if not half else "flash-attn not installed"]
    if not training:  # evaluation batches carry padding masks and a KV cache, which sdpa handles
        return AttentionChoice("sdpa", f"auto: {why_not[0]}, so PyTorch sdpa on {support.gpu} (evaluation)")
    if half and support.torch_varlen:
        return AttentionChoice(TORCH_VARLEN, f"auto: {why_not[0]}, so PyTorch's varlen flash attention on "
                                             f"{support.gpu}, cu_seqlens from the position ids")
    if half:
        why_not.append("no PyTorch varlen flash attention here")
    if support.flex:
        return AttentionChoice("flex_attention", f"auto: {'; '.join(why_not)}, so flex_attention with a "
                                                 f"document-causal BlockMask on {support.gpu}")
    return AttentionChoice("sdpa", f"auto: {'; '.join(why_not)}; no flex_attention, so sdpa on {support.gpu}: causal "
                                   "without a mask for one document per row (train.data.packing: split); packed "
                                   "rows need a dense L×L mask")


def select_attention(requested: str, device: torch.device, dtype: torch.dtype = torch.float32, training: bool = True,
                     support: KernelSupport | None = None) -> AttentionChoice:
    """``(implementation, reason)`` for ``model.attention`` on ``device`` computing in ``dtype``.

    ``auto`` picks, on a CUDA/ROCm GPU, flash_attention_2 (flash-attn imports, bf16/fp16), else PyTorch's varlen
    flash attention (CUDA, bf16/fp16, training), else flex_attention, else sdpa; elsewhere sdpa. An explicit
    choice the device cannot run is a :class:`UserError`. ``support`` defaults to :meth:`KernelSupport.detect`.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if requested == "auto":
        if not on_gpu:
            return AttentionChoice("sdpa", f"auto: no CUDA device ({device.type}), so PyTorch sdpa")
        return _auto_on_gpu(dtype, training, support or KernelSupport.detect())
    if requested in ("flash_attention_2", TORCH_VARLEN):
        return _explicit_flash(requested, device, dtype, training, support)
    if requested == "flex_attention" and training and device.type == "cpu":
        raise UserError("model.attention: flex_attention has no backward pass on CPU, so it cannot train "
                        "there (use sdpa; flex works for evaluation)")
    if requested in DENSE_MASK:
        return AttentionChoice(requested, "requested; rows holding several documents reach it with a dense L×L mask")
    if requested != "flex_attention":
        raise UserError(f"model.attention: unknown implementation {requested!r}")
    return AttentionChoice(requested, "requested")


def _explicit_flash(requested: str, device: torch.device, dtype: torch.dtype, training: bool,
                    support: KernelSupport | None) -> AttentionChoice:
    if device.type != "cuda":
        raise UserError(f"model.attention: {requested} needs a CUDA or ROCm GPU, the device is "
                        f"{device.type} (use sdpa or auto)")
    support = support or KernelSupport.detect()
    if requested == "flash_attention_2" and not support.flash_attn:
        raise UserError("model.attention: flash_attention_2 needs the flash-attn package "
                        "(pip install flash-attn --no-build-isolation), which does not import here")
    if requested == TORCH_VARLEN and not support.torch_varlen:
        raise UserError(f"model.attention: {TORCH_VARLEN} needs PyTorch's varlen flash attention "
                        "(torch >= 2.10, CUDA, sm80 or newer), which is not available here (use auto)")
    if requested == TORCH_VARLEN and not training:
        raise UserError(f"model.attention: {TORCH_VARLEN} trains on packed rows only; evaluate with sdpa or auto")
    if dtype not in HALF:
        raise UserError(f"model.attention: {requested} runs in bf16 or fp16, and model.precision gives "
                        f"{_dtype_name(dtype)} (use auto, or precision bf16)")
    return AttentionChoice(requested, f"requested, {_dtype_name(dtype)} on {support.gpu}")


def continue_padding_tail(position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``position_ids`` with each row's last document continuing the one before it when all its labels are ignored.

    That is packing's padding tail: no token attends to it and no loss is taken on it, so this changes no loss,
    and a row holding one document then counts up without a restart, which sdpa runs causal without a mask.
    """
    length = position_ids.shape[-1]
    starts = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1) != 1
    segment = starts.cumsum(-1)
    last = segment == segment[:, -1:]
    merge = ((labels == IGNORE_INDEX) | ~last).all(-1, keepdim=True) & (segment[:, -1:] > 0)
    tail_start = length - last.sum(-1, keepdim=True)
    before = position_ids.gather(-1, (tail_start - 1).clamp(min=0))
    columns = torch.arange(length, device=position_ids.device)
    return torch.where(last & merge, before + 1 + columns - tail_start, position_ids)


def decoder_rows(implementation: str, input_ids: torch.Tensor,
                 position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows to give the decoder: for :data:`FLATTENED` kernels one row of B·L tokens (every row starts a new
    document at position 0, so documents stay apart), otherwise the rows as they are."""
    if implementation in FLATTENED and input_ids.shape[0] > 1:
        return input_ids.reshape(1, -1), position_ids.reshape(1, -1)
    return input_ids, position_ids


def dense_mask_bytes(implementation: str, position_ids: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of the ``[B,1,L,L]`` mask transformers builds for these rows: sdpa's is bool, eager's in ``dtype``;
    0 where no row holds more than one document or the kernel needs no dense mask (reads the tensor: a sync)."""
    if implementation not in DENSE_MASK:
        return 0
    if not bool((torch.diff(position_ids, dim=-1) != 1).any()):
        return 0
    batch, length = position_ids.shape
    element = 1 if implementation == "sdpa" else torch.finfo(dtype).bits // 8
    return batch * length * length * element
