"""Name a tokenizer's pre-tokenizer the way llama.cpp does (``tokenizer.ggml.pre``), from its configuration.

llama.cpp's converter recognises a pre-tokenizer by hashing the ids a tokenizer gives a test text, so a vocabulary
trained here never matches. The split rules themselves are what llama.cpp implements, so they are read from
``tokenizer.json`` instead and matched against the rules of llama.cpp's named pre-tokenizers (``src/llama-vocab.cpp``).
A tokenizer that matches none, or that llama.cpp would encode differently for another reason, is a
:class:`UserError` naming the field: never a fallback to a pre-tokenizer that splits differently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.file_reading import read_json_object

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# llama.cpp's name -> (the tokenizers pre_tokenizer it implements, BPE ignore_merges it sets)
KNOWN: dict[str, tuple[list[dict[str, Any]], bool]] = {
    # each digit alone, then GPT-2's split: SmolLM's and StarCoder's (llama.cpp: "\p{N}" then the GPT-2 regex)
    "smollm": ([{"type": "Digits", "individual_digits": True}, BYTE_LEVEL], False),
    "gpt-2": ([BYTE_LEVEL], False),
    # Llama 3: its own split regex, then byte-level without GPT-2's regex; merges are ignored for whole-word tokens
    "llama-bpe": ([{"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                   dict(BYTE_LEVEL, use_regex=False)], True),
}
_IGNORED_KEYS = {"trim_offsets"}  # offsets only: the ids do not depend on them
# bytes no valid text of assigned characters holds: never valid in UTF-8, or leading planes 4-11 (unassigned)
_NEVER_IN_TEXT = {0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)}
_CONTROL = {*range(0x20), 0x7F} - {0x09, 0x0A, 0x0D}

log = logging.getLogger(__name__)


def _steps(pre_tokenizer: dict[str, Any] | None) -> list[dict[str, Any]]:
    if pre_tokenizer is None:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [step for part in pre_tokenizer["pretokenizers"] for step in _steps(part)]
    return [{k: v for k, v in pre_tokenizer.items() if k not in _IGNORED_KEYS}]


def _describe(steps: list[dict[str, Any]]) -> str:
    return " then ".join(json.dumps(step, sort_keys=True) for step in steps) or "none"


def _byte_symbols() -> dict[int, str]:
    """Byte -> the character byte-level BPE writes it as (GPT-2's ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}


def _check_bytes(vocab: dict[str, int], where: str) -> None:
    """Every byte of ordinary text needs its symbol: llama.cpp drops a byte it has no token for, where the
    tokenizer gives its unknown token. Rare control characters only warn (real vocabularies such as SmolLM2's
    lack a few); a missing byte of printable text is an error."""
    missing = {b for b, symbol in _byte_symbols().items() if symbol not in vocab} - _NEVER_IN_TEXT
    if missing - _CONTROL:
        shown = ", ".join(f"0x{b:02X}" for b in sorted(missing - _CONTROL))
        raise UserError(f"{where} model.vocab: no token for the byte(s) {shown}; llama.cpp would drop them from texts "
                        "where the tokenizer gives its unknown token")
    if missing:
        log.warning("%s: no token for the control byte(s) %s: llama.cpp drops them from a text, the tokenizer gives "
                    "its unknown token", where, ", ".join(f"0x{b:02X}" for b in sorted(missing)))


def llama_cpp_pre_tokenizer(tokenizer_json: Path) -> str:
    """llama.cpp's name for the pre-tokenizer of ``tokenizer_json``; a UserError when llama.cpp has no faithful one."""
    if not tokenizer_json.is_file():
        raise UserError(f"{tokenizer_json}: not found; GGUF export needs a byte-level BPE tokenizer.json (as Llama 3)")
    config = read_json_object(tokenizer_json)
    model = config.get("model") or {}
    where = str(tokenizer_json)
    if model.get("type") != "BPE":
        raise UserError(f"{where} model.type: {model.get('type')!r}; GGUF export supports byte-level BPE only")
    normalizer = config.get("normalizer")
    if normalizer is not None and normalizer != {"type": "Sequence", "normalizers": []}:
        raise UserError(f"{where} normalizer: {_describe([normalizer])}; llama.cpp applies no normalizer to BPE")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UserError(f"{where} model.{key}: {model[key]!r}; llama.cpp's BPE has no such setting")
    steps = _steps(config.get("pre_tokenizer"))
    name = next((name for name, (known, _) in KNOWN.items() if known == steps), None)
    if name is None:
        raise UserError(f"{where} pre_tokenizer: {_describe(steps)} matches none of llama.cpp's pre-tokenizers "
                        f"(known here: {', '.join(KNOWN)})")
    if bool(model.get("ignore_merges")) != KNOWN[name][1]:
        raise UserError(f"{where} model.ignore_merges: {bool(model.get('ignore_merges'))}; llama.cpp's {name!r} "
                        f"pre-tokenizer uses {KNOWN[name][1]}")
    _check_bytes(model.get("vocab", {}), where)
    return name
