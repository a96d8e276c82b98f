"""Needles in haystacks, built in the evaluated model's own tokens.

One definition of the key-value retrieval task serves both training data (synthetic passkey and multi-key
documents) and evaluation (needle grid, RULER-style needles), so a model trained on it is asked the same way.
A haystack is built from whole sentences tokenised one by one, so every needle sits at a sentence
boundary and its token position is exact.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

_ADJECTIVES = ("old", "quiet", "bright", "small", "green", "cold", "distant", "slow", "tall", "warm", "dark", "soft")
_NOUNS = ("river", "garden", "city", "mountain", "forest", "harbor", "village", "road", "field", "tower", "lake",
          "market", "bridge", "valley", "island", "station")
_VERBS = ("holds", "watches", "follows", "crosses", "meets", "hides", "carries", "leaves", "finds", "keeps")
_TAILS = ("at dawn", "in winter", "after the rain", "every morning", "before noon", "at night", "in the spring",
          "near the shore", "without a sound", "for a while")
KEY_NAMES = ("apple", "banana", "cherry", "delta", "eagle", "falcon", "garnet", "harbor", "indigo", "jasmine",
             "kettle", "lemon", "marble", "nectar", "orchid", "pepper", "quartz", "raven", "saffron", "tulip",
             "umber", "violet", "walnut", "yarrow", "zephyr", "amber", "basil", "cobalt", "dune", "ember")


@dataclass(frozen=True)
class Needle:
    """A key and its value: ``The pass key for <key> is <value>.``"""

    key: str
    value: str

    @property
    def sentence(self) -> str:
        return f" The pass key for {self.key} is {self.value}."

    @property
    def question(self) -> str:
        return f"\nWhat is the pass key for {self.key}? The pass key for {self.key} is"

    @property
    def answer(self) -> str:
        return f" {self.value}"


class Statement(Protocol):
    """What ``build_haystack`` hides: a :class:`Needle`, or any other sentence (RULER's facts)."""

    @property
    def sentence(self) -> str: ...


class Question(Protocol):
    """What ``build_haystack`` asks at the end: the asked :class:`Needle`, or another question and its answer."""

    @property
    def question(self) -> str: ...

    @property
    def answer(self) -> str: ...


@dataclass
class Haystack:
    """A prompt in token ids with needles inside and the question at the end; ``answer`` is the expected text."""

    input_ids: list[int]
    answer: str
    answer_ids: list[int]
    needle_positions: list[int] = field(default_factory=list)
    """Token index where each needle sentence starts, in the order of the needles given."""


def filler_sentence(rng: random.Random) -> str:
    """One sentence of the built-in offline filler."""
    return (f" The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} the "
            f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_TAILS)}.")


def make_needles(rng: random.Random, count: int, digits: int = 5) -> list[Needle]:
    """``count`` needles with distinct keys and random ``digits``-digit values."""
    keys = rng.sample(KEY_NAMES, count)
    return [Needle(k, str(rng.randrange(10 ** (digits - 1), 10 ** digits))) for k in keys]


class SentenceTokens:
    """Tokenises sentences one by one and caches them (filler sentences repeat across cells)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, text: str) -> tuple[int, ...]:
        return self._encode(text)

    @property
    def bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None else []


def build_haystack(tokens: SentenceTokens, length: int, needles: Sequence[Statement], depths: list[float],
                   asked: Question, rng: random.Random, filler: list[str] | None = None) -> Haystack:
    """A prompt of at most ``length`` tokens (answer excluded) with each needle at its depth (0..1).

    Depth is the fraction of the haystack's filler tokens before the needle, rounded to the nearest
    sentence boundary. ``filler`` gives the haystack sentences in order (cycled); by default random
    sentences of the built-in filler are drawn from ``rng``.
    """
    if len(needles) != len(depths):
        raise ValueError("one depth per needle")
    fixed = len(tokens.bos) + sum(len(tokens(n.sentence)) for n in needles) + len(tokens(asked.question))
    budget = length - fixed
    if budget < 0:
        raise ValueError(f"length {length} is too short for the needles and the question ({fixed} tokens)")
    sentences: list[tuple[int, ...]] = []
    used, i = 0, 0
    while True:
        text = filler[i % len(filler)] if filler else filler_sentence(rng)
        ids = tokens(text)
        if used + len(ids) > budget:
            break
        sentences.append(ids)
        used += len(ids)
        i += 1
    boundaries = [0]
    for ids in sentences:
        boundaries.append(boundaries[-1] + len(ids))
    slots = [min(range(len(boundaries)), key=lambda b: abs(boundaries[b] - d * used)) for d in depths]
    order = sorted(range(len(needles)), key=lambda j: (slots[j], j))
    input_ids = list(tokens.bos)
    positions = [0] * len(needles)
    cursor = 0
    for j in order:
        for ids in sentences[cursor:slots[j]]:
            input_ids.extend(ids)
        cursor = max(cursor, slots[j])
        positions[j] = len(input_ids)
        input_ids.extend(tokens(needles[j].sentence))
    for ids in sentences[cursor:]:
        input_ids.extend(ids)
    input_ids.extend(tokens(asked.question))
    return Haystack(input_ids, asked.answer, list(tokens(asked.answer)), positions)
