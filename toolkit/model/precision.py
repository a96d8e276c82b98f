"""Precision names (``model.precision``, ``--precision``, a judge's ``precision``) and the torch dtypes they mean."""

from __future__ import annotations

import torch

from toolkit.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""Each precision name but ``auto`` and its dtype."""
HALF = (torch.bfloat16, torch.float16)
"""The 16-bit floating-point dtypes."""


def precision_name(dtype: torch.dtype) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for those dtypes; torch's name for any other."""
    return next((name for name, known in DTYPES.items() if known == dtype), dtype_name(dtype))


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name of ``dtype`` without the module: ``bfloat16``, ``float32``."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``model.precision`` as a torch dtype: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    device = torch.device(device)
    if precision == "auto":
        gpu_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise UserError("model.precision: fp16 is not supported on CPU (use bf16, fp32 or auto)")
    if precision not in DTYPES:
        raise UserError(f"model.precision: unknown precision {precision!r}")
    return DTYPES[precision]
