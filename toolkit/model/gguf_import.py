"""A Llama-architecture GGUF file as a plain transformers folder (safetensors, config, tokenizer, chat template).

transformers reads GGUF files (``from_pretrained(folder, gguf_file=...)``) by dequantizing every tensor, but
the model it returns is marked GGUF-quantized and refuses ``save_pretrained``. So the dequantized weights are
moved into a fresh model built from the same config, which saves like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from toolkit.errors import UserError
from toolkit.model.precision import dtype_name
from toolkit.output_paths import atomic_dir

log = logging.getLogger(__name__)

_NOT_SAVED = ("quantization_config", "_name_or_path", "_model_name_or_path")


def _special_ids(tokenizer, bos: str | None, eos: str | None) -> dict[str, int]:
    """Set the tokenizer's bos/eos (and pad = eos) to the named tokens; their ids, for the model's config."""
    for role, token in (("bos", bos), ("eos", eos)):
        if token is None:
            continue
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise UserError(f"{role} token {token!r} is not in the GGUF file's vocabulary")
        setattr(tokenizer, f"{role}_token", token)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id")
            for role in ("bos", "eos", "pad") if getattr(tokenizer, f"{role}_token_id") is not None}


def import_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16, bos: str | None = None,
                eos: str | None = None) -> Path:
    """Write ``out_dir`` from ``gguf_path``, atomically: a half-written folder never takes its name.

    ``bos``/``eos`` name the special tokens when the GGUF metadata gets them wrong (some conversions mark
    the chat template's start token as the end of sequence).
    """
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF file")
    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece clean-up that would strip spaces from BPE text
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for key in _NOT_SAVED:
        if hasattr(config, key):
            delattr(config, key)
    for key, value in _special_ids(tokenizer, bos, eos).items():
        setattr(config, key, value)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    with atomic_dir(out_dir) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    log.info("wrote %s (%s, %d parameters)", out_dir, dtype_name(dtype),
             sum(p.numel() for p in model.parameters()))
    return out_dir
