"""Which attention kernel each device, dtype and installation gets, why, and how packed rows reach it.

Devices, dtypes and what is installed are parameters (``KernelSupport``), so every branch runs on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.masking_utils import create_causal_mask
from transformers.utils.import_utils import is_torch_flex_attn_available

from toolkit.errors import UserError
from toolkit.model.attention import (
    FLASH_ATTENTION_4,
    TORCH_VARLEN,
    KernelSupport,
    cudnn_for_one_document_rows,
    dense_mask_bytes,
    select_attention,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
EVERYTHING = KernelSupport(flash_attn=True, torch_varlen=True, flex=True)
NO_FLASH_ATTN = KernelSupport(flash_attn=False, torch_varlen=True, flex=True)
FLEX_ONLY = KernelSupport(flash_attn=False, torch_varlen=False, flex=True)
NOTHING = KernelSupport(flash_attn=False, torch_varlen=False, flex=False)
HOPPER_FA4 = KernelSupport(flash_attn=True, torch_varlen=True, flex=True, flash_attn_4=True)


@pytest.mark.parametrize(("dtype", "support", "training", "expected", "words"), [
    (BF16, HOPPER_FA4, True, FLASH_ATTENTION_4, "flash-attn-4 installed, bfloat16 on CUDA sm90+"),
    (FP16, HOPPER_FA4, True, FLASH_ATTENTION_4, "K/V heads grouped"),
    (FP32, HOPPER_FA4, True, "flex_attention", "float32 never takes flash"),
    (BF16, HOPPER_FA4, False, "flash_attention_2", "padding masks"),  # flash-attn-4 has no KV cache
    (BF16, EVERYTHING, True, "flash_attention_2", "flattened to one row"),
    (FP16, EVERYTHING, True, "flash_attention_2", "float16 on CUDA"),
    (BF16, NO_FLASH_ATTN, True, TORCH_VARLEN, "flash-attn not installed, so PyTorch's varlen flash attention"),
    (FP32, EVERYTHING, True, "flex_attention", "float32 never takes flash, so flex_attention"),
    (BF16, FLEX_ONLY, True, "flex_attention", "no PyTorch varlen flash attention here, so flex_attention"),
    (BF16, NOTHING, True, "sdpa", "one document per row"),
    (FP32, NOTHING, True, "sdpa", "float32 never takes flash; no flex_attention"),
    (BF16, EVERYTHING, False, "flash_attention_2", "padding masks"),
    (BF16, NO_FLASH_ATTN, False, "sdpa", "(evaluation)"),  # varlen takes no padding mask
    (FP32, EVERYTHING, False, "sdpa", "float32 never takes flash"),
    (BF16, KernelSupport(flash_attn=True, torch_varlen=False, flex=True, rocm="6.2.4"), True, "flash_attention_2",
     "ROCm 6.2.4"),
])
def test_auto_on_a_gpu(dtype, support, training, expected, words) -> None:
    implementation, reason = select_attention("auto", CUDA, dtype, training, support)
    assert implementation == expected
    assert reason.startswith("auto: ") and words in reason


@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_auto_off_a_gpu_is_sdpa(dtype) -> None:
    assert select_attention("auto", CPU, dtype, support=EVERYTHING) == (
        "sdpa", "auto: no CUDA device (cpu), so PyTorch sdpa")


@pytest.mark.parametrize(("requested", "device", "dtype", "support", "training", "message"), [
    ("flash_attention_2", CPU, BF16, EVERYTHING, True, "flash_attention_2 needs a CUDA or ROCm GPU, the device is cpu"),
    ("flash_attention_2", CUDA, BF16, NO_FLASH_ATTN, True, "flash_attention_2 needs the flash-attn package"),
    ("flash_attention_2", CUDA, FP32, EVERYTHING, True, "flash_attention_2 runs in bf16 or fp16, and model.precision "
                                                        "gives float32"),
    (TORCH_VARLEN, CPU, BF16, EVERYTHING, True, f"{TORCH_VARLEN} needs a CUDA or ROCm GPU"),
    (TORCH_VARLEN, CUDA, BF16, FLEX_ONLY, True, f"{TORCH_VARLEN} needs PyTorch's varlen flash attention"),
    (TORCH_VARLEN, CUDA, FP32, EVERYTHING, True, f"{TORCH_VARLEN} runs in bf16 or fp16"),
    (TORCH_VARLEN, CUDA, BF16, EVERYTHING, False, f"{TORCH_VARLEN} trains on packed rows only"),
    (FLASH_ATTENTION_4, CUDA, BF16, EVERYTHING, True, f"{FLASH_ATTENTION_4} needs the flash-attn-4 package"),
    (FLASH_ATTENTION_4, CUDA, BF16, HOPPER_FA4, False, f"{FLASH_ATTENTION_4} trains on packed rows only"),
    (FLASH_ATTENTION_4, CUDA, FP32, HOPPER_FA4, True, f"{FLASH_ATTENTION_4} runs in bf16 or fp16"),
    ("flex_attention", CPU, FP32, EVERYTHING, True, "flex_attention has no backward pass on CPU"),
    ("paged", CPU, FP32, EVERYTHING, True, "unknown implementation 'paged'"),
])
def test_impossible_choices_are_user_errors(requested, device, dtype, support, training, message) -> None:
    with pytest.raises(UserError, match=rf"^model\.attention: {message}"):
        select_attention(requested, device, dtype, training, support)


def test_explicit_choices_that_run() -> None:
    assert select_attention("flash_attention_2", CUDA, BF16, support=EVERYTHING) == (
        "flash_attention_2", "requested, bfloat16 on CUDA")
    assert select_attention(TORCH_VARLEN, CUDA, FP16, support=NO_FLASH_ATTN).implementation == TORCH_VARLEN
    assert select_attention(FLASH_ATTENTION_4, CUDA, BF16, support=HOPPER_FA4) == (
        FLASH_ATTENTION_4, "requested, bfloat16 on CUDA")
    assert select_attention("flex_attention", CPU, FP32, training=False) == ("flex_attention", "requested")
    assert select_attention("flex_attention", CUDA, FP32, support=NOTHING) == ("flex_attention", "requested")
    for kernel in ("sdpa", "eager"):
        implementation, reason = select_attention(kernel, CUDA, BF16, support=EVERYTHING)
        assert implementation == kernel and "dense L×L mask" in reason


@pytest.mark.parametrize(("capability", "dtype", "expected"), [
    ((9, 0), BF16, True), ((9, 0), FP16, True), ((9, 0), FP32, False),
    ((8, 0), BF16, False), ((10, 0), BF16, False), ((12, 0), BF16, False), (None, BF16, False),
])
def test_rows_of_one_document_take_cudnn_on_hopper_only(capability, dtype, expected) -> None:
    assert cudnn_for_one_document_rows(capability, dtype) is expected


def test_the_flash_attn_4_probe_needs_hopper_and_the_package(monkeypatch) -> None:
    """Without its distribution, or below sm90, flash-attn-4 is not offered; flash-attn-4's own ``flash_attn``
    namespace package alone does not make flash-attn 2 importable."""
    import toolkit.model.attention as attention

    monkeypatch.setattr(attention, "_capability", lambda: (9, 0))
    assert attention._flash_attn_4_usable() is False  # flash-attn-4 is not installed here
    monkeypatch.setattr(attention.importlib.metadata, "distribution", lambda name: name)
    monkeypatch.setattr(attention.importlib, "import_module", lambda name: name)
    assert attention._flash_attn_4_usable() is True
    monkeypatch.setattr(attention, "_capability", lambda: (8, 0))
    assert attention._flash_attn_4_usable() is False


def _config(kernel: str) -> LlamaConfig:
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    config._attn_implementation = kernel
    return config


def _mask(kernel: str, positions: torch.Tensor, dtype: torch.dtype = FP32):
    embeds = torch.zeros(*positions.shape, 16, dtype=dtype)
    return create_causal_mask(config=_config(kernel), inputs_embeds=embeds, attention_mask=None,
                              past_key_values=None, position_ids=positions)


def test_which_kernels_get_a_dense_mask_and_how_large() -> None:
    """The sizes the plan and the warning count, against the mask transformers actually builds."""
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0]] * 2)
    one_document = torch.arange(8).expand(2, 8)
    sdpa = _mask("sdpa", packed)
    assert sdpa.shape == (2, 1, 8, 8) and sdpa.dtype == torch.bool
    assert dense_mask_bytes("sdpa", packed, BF16) == sdpa.numel() * sdpa.element_size() == 128
    eager = _mask("eager", packed, BF16)
    assert dense_mask_bytes("eager", packed, BF16) == eager.numel() * eager.element_size() == 256
    assert _mask("sdpa", one_document) is None and dense_mask_bytes("sdpa", one_document, BF16) == 0
    assert dense_mask_bytes("flash_attention_2", packed, BF16) == 0
    assert dense_mask_bytes("sdpa", torch.zeros(1, 65536, dtype=torch.long), BF16) == 4 * 2**30  # 4 GiB at 64K


@pytest.mark.skipif(not is_torch_flex_attn_available(), reason="flex_attention not in this torch")
def test_flex_gets_a_block_mask_for_packed_rows() -> None:
    from torch.nn.attention.flex_attention import BlockMask

    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0]] * 2)
    assert isinstance(_mask("flex_attention", packed), BlockMask)
