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

from toolkit.data.tokens import bos_prefix

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
    def ask(self) -> str:
        return f"\nWhat is the pass key for {self.key}?"

    @property
    def lead(self) -> str:
        return f"The pass key for {self.key} is"

    @property
    def question(self) -> str:
        return f"{self.ask} {self.lead}"

    @property
    def answer(self) -> str:
        return f" {self.value}"


class Statement(Protocol):
    """What ``build_haystack`` hides: a :class:`Needle`, or any other sentence (RULER's facts)."""

    @property
    def sentence(self) -> str: ...


class Question(Protocol):
    """What ``build_haystack`` asks at the end: the asked :class:`Needle`, or another question and its answer.

    ``question`` is ``ask + " " + lead``: the question, then the start of the answer that ``answer`` completes.
    In a chat prompt (:class:`ChatFrame`) ``ask`` ends the user's turn and ``lead`` opens the assistant's.
    """

    @property
    def ask(self) -> str: ...

    @property
    def lead(self) -> str: ...

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


@dataclass(frozen=True)
class ChatFrame:
    """The model's chat template around a haystack prompt, in token ids: ``head`` + haystack + ask + ``turn`` +
    lead + answer, where ``head`` opens the user's turn and ``turn`` closes it and opens the assistant's."""

    head: tuple[int, ...]
    turn: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> ChatFrame:
        """The frame of ``tokenizer``'s chat template (one user message, generation prompt added)."""
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        marker = "\x00CONTENT\x00"
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True,
                                             tokenize=False)
        head, turn = text.split(marker)
        encode = tokenizer(text=[head, turn], add_special_tokens=False)["input_ids"]
        return cls(tuple(encode[0]), tuple(encode[1]))


def filler_sentence(rng: random.Random) -> str:
    """One sentence of the built-in offline filler."""
    return (f" The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} the "
            f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_TAILS)}.")


def make_needles(rng: random.Random, count: int, digits: int = 5) -> list[Needle]:
    """``count`` needles with distinct keys and random ``digits``-digit values."""
    keys = rng.sample(KEY_NAMES, count)
    return [Needle(k, str(rng.randrange(10 ** (digits - 1), 10 ** digits))) for k in keys]


def draw_depth(rng: random.Random, edge_fraction: float) -> float:
    """A training needle's depth: 0 or 1 with probability ``edge_fraction`` (half each), else uniform in [0, 1);
    uniform depths seldom reach the edges that evaluation grids test."""
    if edge_fraction:
        draw = rng.random()
        if draw < edge_fraction:
            return 0.0 if draw < edge_fraction / 2 else 1.0
    return rng.random()


class SentenceTokens:
    """Tokenises sentences one by one and caches them (filler sentences repeat across cells)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos: list[int] = bos_prefix(tokenizer)
        """What the tokenizer puts in front of a text (see :func:`toolkit.data.tokens.bos_prefix`)."""
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, text: str) -> tuple[int, ...]:
        return self._encode(text)


class TooShort(ValueError):
    """A prompt length that cannot hold its needles and question (``needed`` tokens of them)."""

    def __init__(self, length: int, needed: int):
        super().__init__(f"length {length} is too short for the needles and the question ({needed} tokens)")
        self.length, self.needed = length, needed


def build_haystack(tokens: SentenceTokens, length: int, needles: Sequence[Statement], depths: list[float],
                   asked: Question, rng: random.Random, filler: list[str] | None = None,
                   chat: ChatFrame | None = None) -> Haystack:
    """A prompt of at most ``length`` tokens (answer excluded) with each needle at its depth (0..1).

    Depth is the fraction of the haystack's filler tokens before the needle, rounded to the nearest
    sentence boundary. ``filler`` gives the haystack sentences in order (cycled); by default random
    sentences of the built-in filler are drawn from ``rng``. With ``chat``, haystack and question form the
    user's turn of the model's chat template and the assistant's turn starts with the answer's lead.
    """
    if len(needles) != len(depths):
        raise ValueError("one depth per needle")
    if chat is None:
        head, tail = list(tokens.bos), list(tokens(asked.question))
    else:
        head, tail = list(chat.head), list(tokens(asked.ask)) + list(chat.turn) + list(tokens(asked.lead))
    fixed = len(head) + sum(len(tokens(n.sentence)) for n in needles) + len(tail)
    budget = length - fixed
    if budget < 0:
        raise TooShort(length, fixed)
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
    input_ids = head
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
    input_ids.extend(tail)
    return Haystack(input_ids, asked.answer, list(tokens(asked.answer)), positions)
