"""Haystack text: the built-in filler, a local text file, or a dataset (failing when it cannot be read, unless
the spec allows the built-in filler as a fallback).

Text is cut into sentences (each with a leading space, as ``toolkit.data.needle`` expects) so needles land
on sentence boundaries; a haystack is a window of consecutive sentences starting at a random sentence.
"""

from __future__ import annotations

import logging
import random
import re
from functools import lru_cache
from pathlib import Path

from toolkit.data.needle import SentenceTokens, filler_sentence
from toolkit.errors import UserError
from toolkit.evals.specs import HaystackSpec

log = logging.getLogger(__name__)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MAX_WORDS = 40
_DATASET_CHARS = 4_000_000


def split_sentences(text: str) -> list[str]:
    """Sentences with normalised whitespace and a leading space; run-on text is cut every 40 words."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        words = sentence.split()
        out.extend(" " + " ".join(words[i:i + _MAX_WORDS]) for i in range(0, len(words), _MAX_WORDS))
    return out


def _dataset_text(spec: HaystackSpec) -> str:
    from datasets import load_dataset

    rows = load_dataset(spec.path, spec.config, split=spec.split, streaming=True)
    parts, size = [], 0
    for row in rows:
        parts.append(str(row[spec.text_field]))
        size += len(parts[-1])
        if size >= _DATASET_CHARS:
            break
    return "\n".join(parts)


@lru_cache(maxsize=8)
def _load(spec_json: str) -> tuple[tuple[str, ...] | None, str | None]:
    """(sentences or ``None`` for the built-in filler, why a dataset fell back to it or ``None``)."""
    spec = HaystackSpec.model_validate_json(spec_json)
    if spec.source == "builtin":
        return None, None
    if spec.source == "text":
        file = Path(spec.path or "")
        if not file.is_file():
            raise UserError(f"haystack.path: no such text file {spec.path}")
        text = file.read_text(encoding="utf-8", errors="replace")
    else:
        try:
            text = _dataset_text(spec)
        except Exception as exc:  # noqa: BLE001  (unreachable hub, unknown split or field, ...: all named below)
            reason = f"haystack dataset {spec.path} (split {spec.split}) could not be read: " + " ".join(
                f"{type(exc).__name__}: {exc}".split())[:300]
            if not spec.fallback:
                raise UserError(f"{reason}; fix it, or set fallback: true on it to use the built-in filler") from None
            log.warning("%s; using the built-in filler (fallback: true)", reason)
            return None, f"{reason}; the built-in filler was used"
    sentences = tuple(split_sentences(text))
    if not sentences:
        raise UserError(f"haystack.path: {spec.path} holds no text")
    return sentences, None


def load_sentences(spec: HaystackSpec) -> tuple[str, ...] | None:
    """The source's sentences (read once), or ``None`` for the built-in filler (also a dataset's fallback)."""
    return _load(spec.model_dump_json())[0]


def fallback_reason(spec: HaystackSpec) -> str | None:
    """Why the built-in filler stands in for ``spec``'s dataset (``fallback: true``); ``None`` when it does not."""
    return _load(spec.model_dump_json())[1]


def filler_window(sentences: tuple[str, ...] | None, rng: random.Random, max_sentences: int) -> list[str] | None:
    """Up to ``max_sentences`` consecutive sentences from a random start (wrapping); ``None`` = built-in."""
    if sentences is None:
        return None
    start = rng.randrange(len(sentences))
    return [sentences[(start + i) % len(sentences)] for i in range(min(len(sentences), max_sentences))]


def long_document(tokens: SentenceTokens, sentences: tuple[str, ...] | None, length: int,
                  rng: random.Random) -> list[int]:
    """Exactly ``length`` token ids of running text (BOS first when the tokenizer has one)."""
    ids = list(tokens.bos)
    window = filler_window(sentences, rng, length)
    i = 0
    while len(ids) < length:
        ids.extend(tokens(window[i % len(window)] if window else filler_sentence(rng)))
        i += 1
    return ids[:length]
