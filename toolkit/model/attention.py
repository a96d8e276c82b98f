"""Choose the attention kernel (transformers' ``attn_implementation``) for a device and dtype, with the reason why.

Training rows are packed: documents side by side, ``position_ids`` restarting at each. Kernels keep them apart
differently, and only some do so in memory linear in the row length:

- ``flash_attention_4`` (the flash-attn-4 package, CuTe-DSL, Hopper and newer) and ``flash_attention_2`` (the
  flash-attn package): varlen over documents through transformers, at batch size 1 only, so the objective
  flattens a batch of rows into one row of B·L tokens (:mod:`toolkit.model.segments`).
- ``torch_varlen``: PyTorch's own varlen flash attention (:mod:`toolkit.model.attention_varlen`), any batch size.
- ``flex_attention``: a document-causal BlockMask that transformers builds from the position ids.
- ``sdpa`` and ``eager``: causal without a mask for one document per row; a row holding several documents makes
  transformers build a dense ``[B,1,L,L]`` mask (:func:`dense_mask_bytes`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import NamedTuple

import torch

from toolkit.errors import UserError
from toolkit.model.precision import HALF, dtype_name

TORCH_VARLEN = "torch_varlen"
"""The name :mod:`toolkit.model.attention_varlen` registers PyTorch's varlen flash attention under."""
FLASH_ATTENTION_4 = "flash_attention_4"
"""transformers' name for flash-attn-4 (``flash_attn.cute.flash_attn_varlen_func``)."""
FLATTENED = ("flash_attention_2", FLASH_ATTENTION_4)
"""Kernels that keep packed documents apart at batch size 1 only: the objective gives them one row of B·L tokens."""
VARLEN_KWARGS = (*FLATTENED, TORCH_VARLEN)
"""Kernels that take the document boundaries as transformers' flash-attention kwargs (``cu_seq_lens_q`` ...)."""
DENSE_MASK = ("sdpa", "eager")
"""Kernels that reach rows holding several documents through a dense ``[B,1,L,L]`` mask."""
TRAINING_ONLY = (TORCH_VARLEN, FLASH_ATTENTION_4)
"""Kernels without padding masks or a KV cache: training rows only, evaluation runs on sdpa."""
RING_ATTENTION = "sdpa"
"""The one kernel PyTorch's context parallelism (``parallel.sequence: context_parallel``) runs ring attention over."""


def flash_attn_importable() -> bool:
    """Whether flash-attn 2 (CUDA or ROCm build) imports; flash-attn-4 alone also installs a ``flash_attn``
    package (``flash_attn.cute``), so its interface module is what tells."""
    try:
        importlib.import_module("flash_attn.flash_attn_interface")
    except Exception:  # a broken build raises anything from ImportError to OSError/RuntimeError
        return False
    return True


def _capability() -> tuple[int, int] | None:
    """The CUDA device's compute capability, None without one (or on ROCm)."""
    if torch.version.hip or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()


def _torch_varlen_usable() -> bool:
    """PyTorch's varlen flash attention: the module exists, CUDA (not ROCm) with flash kernels, sm80 or newer."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False
    capability = _capability()
    return capability is not None and torch.backends.cuda.is_flash_attention_available() and capability[0] >= 8


def _flash_attn_4_usable() -> bool:
    """flash-attn-4: its distribution installed, ``flash_attn.cute`` imports, a CUDA GPU of sm90 or newer."""
    capability = _capability()
    if capability is None or capability[0] < 9:
        return False
    try:
        importlib.metadata.distribution("flash-attn-4")
        importlib.import_module("flash_attn.cute")
    except Exception:  # not installed, or a build that fails to import
        return False
    return True


@dataclass(frozen=True)
class KernelSupport:
    """What this installation offers on a GPU; :meth:`detect` reads it, tests pass their own."""

    flash_attn: bool
    torch_varlen: bool
    flex: bool
    rocm: str | None = None
    """HIP version on a ROCm build of PyTorch, else None (CUDA)."""
    flash_attn_4: bool = False
    """flash-attn-4 imports and the GPU is Hopper (sm90) or newer."""

    @classmethod
    def detect(cls) -> KernelSupport:
        flex = (importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
                and importlib.util.find_spec("triton") is not None)  # flex compiles to triton kernels on a GPU
        return cls(flash_attn=flash_attn_importable(), torch_varlen=_torch_varlen_usable(), flex=flex,
                   rocm=torch.version.hip, flash_attn_4=_flash_attn_4_usable())

    @property
    def gpu(self) -> str:
        return f"ROCm {self.rocm}" if self.rocm else "CUDA"


class AttentionChoice(NamedTuple):
    implementation: str
    reason: str


def cudnn_for_one_document_rows(capability: tuple[int, int] | None, dtype: torch.dtype) -> bool:
    """Whether ``torch_varlen`` runs rows that each hold one whole document as sdpa with cuDNN's fused attention
    first (then flash) instead of varlen FA2: on Hopper (sm 9.x) in bf16/fp16, where cuDNN's attention is the
    faster of the two; elsewhere varlen."""
    return capability is not None and capability[0] == 9 and dtype in HALF


def _auto_on_gpu(dtype: torch.dtype, training: bool, support: KernelSupport) -> AttentionChoice:
    """flash-attn-4, flash-attn, PyTorch varlen, flex, sdpa (see the module docstring); fp32 never takes flash."""
    half, name = dtype in HALF, dtype_name(dtype)
    if half and training and support.flash_attn_4:
        return AttentionChoice(FLASH_ATTENTION_4, f"auto: flash-attn-4 installed, {name} on {support.gpu} sm90+; "
                                                  "packed rows flattened to one row for varlen, K/V heads grouped")
    if half and support.flash_attn:
        how = "packed rows flattened to one row for varlen" if training else "padding masks unpadded"
        return AttentionChoice("flash_attention_2", f"auto: flash-attn installed, {name} on {support.gpu}; {how}")
    why_not = [f"{name} never takes flash" if not half else "flash-attn not installed"]
    if not training:  # evaluation batches carry padding masks and a KV cache, which sdpa handles
        return AttentionChoice("sdpa", f"auto: {why_not[0]}, so PyTorch sdpa on {support.gpu} (evaluation)")
    if half and support.torch_varlen:
        return AttentionChoice(TORCH_VARLEN, f"auto: {why_not[0]}, so PyTorch's varlen flash attention on "
                                             f"{support.gpu}, cu_seqlens from the position ids once per batch; "
                                             "rows of one whole document on Hopper: sdpa, cuDNN first")
    if half:
        why_not.append("no PyTorch varlen flash attention here")
    if support.flex:
        return AttentionChoice("flex_attention", f"auto: {'; '.join(why_not)}, so flex_attention with a "
                                                 f"document-causal BlockMask on {support.gpu}")
    return AttentionChoice("sdpa", f"auto: {'; '.join(why_not)}; no flex_attention, so sdpa on {support.gpu}: causal "
                                   "without a mask for one document per row (train.data.packing: split); packed "
                                   "rows need a dense L×L mask")


def select_attention(requested: str, device: torch.device, dtype: torch.dtype = torch.float32, training: bool = True,
                     support: KernelSupport | None = None, context_parallel: bool = False) -> AttentionChoice:
    """``(implementation, reason)`` for ``model.attention`` on ``device`` computing in ``dtype``.

    ``auto`` picks, on a CUDA/ROCm GPU, flash_attention_4 (flash-attn-4 imports, sm90+, bf16/fp16, training), else
    flash_attention_2 (flash-attn imports, bf16/fp16), else PyTorch's varlen flash attention (CUDA, bf16/fp16,
    training), else flex_attention, else sdpa; elsewhere sdpa. Under ``context_parallel`` (ring attention) ``auto`` is
    always sdpa (:data:`RING_ATTENTION`; ``toolkit.parallel.sequence`` refuses any other kernel before the run
    starts). An explicit choice the device cannot run is a :class:`UserError`. ``support`` defaults to
    :meth:`KernelSupport.detect`.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if requested == "auto" and context_parallel:
        return AttentionChoice(RING_ATTENTION, "auto: parallel.sequence: context_parallel runs ring attention over "
                                               "sdpa only")
    if requested == "auto":
        if not on_gpu:
            return AttentionChoice("sdpa", f"auto: no CUDA device ({device.type}), so PyTorch sdpa")
        return _auto_on_gpu(dtype, training, support or KernelSupport.detect())
    if requested in ("flash_attention_2", FLASH_ATTENTION_4, TORCH_VARLEN):
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
    if requested == FLASH_ATTENTION_4 and not support.flash_attn_4:
        raise UserError(f"model.attention: {FLASH_ATTENTION_4} needs the flash-attn-4 package "
                        "(pip install '.[fa4]') and a Hopper or newer GPU, which are not both here (use auto)")
    if requested == TORCH_VARLEN and not support.torch_varlen:
        raise UserError(f"model.attention: {TORCH_VARLEN} needs PyTorch's varlen flash attention "
                        "(torch >= 2.10, CUDA, sm80 or newer), which is not available here (use auto)")
    if requested in TRAINING_ONLY and not training:
        raise UserError(f"model.attention: {requested} trains on packed rows only; evaluate with sdpa or auto")
    if dtype not in HALF:
        raise UserError(f"model.attention: {requested} runs in bf16 or fp16, and model.precision gives "
                        f"{dtype_name(dtype)} (use auto, or precision bf16)")
    return AttentionChoice(requested, f"requested, {dtype_name(dtype)} on {support.gpu}")


def dense_mask_bytes(implementation: str, position_ids: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of the ``[B,1,L,L]`` mask transformers builds for these rows: sdpa's is bool, eager's in ``dtype``;
    0 where no row holds more than one document or the kernel needs no dense mask (reads the tensor: a sync)."""
    if implementation not in DENSE_MASK:
        return 0
    if not bool((torch.diff(position_ids, dim=-1) != 1).any()):
        return 0
    batch, length = position_ids.shape
    return dense_mask_size(implementation, batch, length, torch.finfo(dtype).bits // 8)


def dense_mask_size(implementation: str, batch: int, length: int, element_bytes: int) -> int:
    """Bytes of a ``[batch,1,length,length]`` mask for a :data:`DENSE_MASK` kernel: bool for sdpa, eager's in the
    compute dtype (``element_bytes``)."""
    return batch * length * length * (1 if implementation == "sdpa" else element_bytes)
