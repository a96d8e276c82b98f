"""Choose the attention kernel (transformers' ``attn_implementation``) for a device, with the reason why."""

from __future__ import annotations

import importlib

import torch

from toolkit.errors import UserError


def flash_attn_importable() -> bool:
    """Whether the ``flash_attn`` package (CUDA or ROCm build) imports."""
    try:
        importlib.import_module("flash_attn")
    except Exception:  # a broken build raises anything from ImportError to OSError/RuntimeError
        return False
    return True


def _gpu_kind() -> str:
    return f"ROCm {torch.version.hip}" if torch.version.hip else "CUDA"


def select_attention(requested: str, device: torch.device, training: bool = True) -> tuple[str, str]:
    """``(implementation, reason)`` for ``model.attention`` on ``device``.

    ``auto`` takes flash_attention_2 where flash-attn imports on a CUDA/ROCm GPU, else sdpa. An explicit
    choice the device cannot run is a :class:`UserError`: flash_attention_2 without a GPU or the package,
    and flex_attention for training on CPU (PyTorch has no flex backward on CPU; eval works).
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if requested == "auto":
        if not on_gpu:
            return "sdpa", f"auto: no CUDA device ({device.type}), so PyTorch sdpa"
        if not flash_attn_importable():
            return "sdpa", f"auto: flash-attn not installed, so PyTorch sdpa on {_gpu_kind()}"
        return "flash_attention_2", f"auto: flash-attn installed and a {_gpu_kind()} GPU"
    if requested == "flash_attention_2":
        if not on_gpu:
            raise UserError(f"model.attention: flash_attention_2 needs a CUDA or ROCm GPU, the device is "
                            f"{device.type} (use sdpa or auto)")
        if not flash_attn_importable():
            raise UserError("model.attention: flash_attention_2 needs the flash-attn package "
                            "(pip install flash-attn --no-build-isolation), which does not import here")
        return requested, f"requested, on {_gpu_kind()}"
    if requested == "flex_attention" and training and device.type == "cpu":
        raise UserError("model.attention: flex_attention has no backward pass on CPU, so it cannot train "
                        "there (use sdpa; flex works for evaluation)")
    if requested not in ("sdpa", "eager", "flex_attention"):
        raise UserError(f"model.attention: unknown implementation {requested!r}")
    return requested, "requested"
