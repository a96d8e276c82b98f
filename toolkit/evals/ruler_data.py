"""RULER's synthetic tasks, generated at any length in the evaluated model's tokens (no download).

Following RULER (Hsieh et al. 2024, github.com/NVIDIA/RULER) with our needle format:
  niah_single      one needle, asked.
  niah_multikey    four needles, one asked, three distractors.
  niah_multivalue  one key with four values, all asked.
  niah_multiquery  four needles, all asked.
  vt               variable tracking: a chain VAR A = 12345, VAR B = VAR A, ... (four hops) hidden in the
                   haystack; name every variable holding the value.
  cwe              common words extraction: a numbered word list where ten words repeat often; name them.
  fwe              frequent words extraction: Zipf-distributed coded words; name the three most frequent.
The needle family and vt reuse ``toolkit.data.needle.build_haystack`` (sentence-boundary placement);
cwe and fwe grow their word lists to the largest size that fits. A prompt scores by ``string_match_all``.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from toolkit.data.needle import Needle, Question, SentenceTokens, Statement, TooShort, build_haystack, make_needles
from toolkit.errors import UserError
from toolkit.evals.haystack import filler_window

_ANSWER_MARGIN = 4
VT_HOPS = 4
"""Assignments after the first in a variable-tracking chain (RULER's default): VT_HOPS + 1 variables to name."""
FWE_ALPHA = 2.0
"""Zipf exponent of the frequent-words task's word counts (RULER's default)."""


@dataclass(frozen=True)
class Fact:
    """A sentence hidden in the haystack (a :class:`toolkit.data.needle.Statement`, as a :class:`Needle` is)."""

    sentence: str


@dataclass(frozen=True)
class Query:
    """A question, the start of its answer and the reference answer text (a :class:`toolkit.data.needle.Question`,
    as a :class:`Needle` is)."""

    ask: str
    lead: str
    answer: str

    @property
    def question(self) -> str:
        return f"{self.ask} {self.lead}"


@dataclass
class RulerSample:
    input_ids: list[int]
    answers: list[str]
    """Every string the greedy output must contain (scored as the fraction found)."""
    max_new_tokens: int


def _answer_budget(tokens: SentenceTokens, answers: list[str]) -> int:
    return len(tokens(" " + ", ".join(answers))) + _ANSWER_MARGIN


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _haystack_sample(tokens: SentenceTokens, length: int, facts: Sequence[Statement], query: Question,
                     answers: list[str], rng: random.Random, sentences: tuple[str, ...] | None,
                     ordered: bool = False) -> RulerSample:
    budget = _answer_budget(tokens, answers)
    depths = [rng.random() for _ in facts]
    stack = build_haystack(tokens, length - budget, facts, sorted(depths) if ordered else depths, query, rng,
                           filler_window(sentences, rng, length))
    return RulerSample(stack.input_ids, answers, budget)


def _needle_family(name: str, tokens: SentenceTokens, length: int, rng: random.Random,
                   sentences: tuple[str, ...] | None, digits: int) -> RulerSample:
    count = 1 if name == "niah_single" else 4
    needles = make_needles(rng, count, digits)
    if name in ("niah_single", "niah_multikey"):
        asked = rng.choice(needles)
        return _haystack_sample(tokens, length, needles, asked, [asked.value], rng, sentences)
    if name == "niah_multivalue":
        key = needles[0].key
        values = [n.value for n in needles]
        facts = [Needle(key, value) for value in values]
        query = Query(f"\nWhat are all the pass keys for {key}?", f"The pass keys for {key} are",
                      " " + _listing(values))
        return _haystack_sample(tokens, length, facts, query, values, rng, sentences)
    keys = _listing([n.key for n in needles])
    values = [n.value for n in needles]
    query = Query(f"\nWhat are the pass keys for {keys}?", f"The pass keys for {keys} are", " " + _listing(values))
    return _haystack_sample(tokens, length, needles, query, values, rng, sentences)


def _variable_tracking(tokens: SentenceTokens, length: int, rng: random.Random,
                       sentences: tuple[str, ...] | None, digits: int) -> RulerSample:
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    value = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
    facts = [Fact(f" VAR {names[0]} = {value}.")] + [Fact(f" VAR {b} = VAR {a}.") for a, b in itertools.pairwise(names)]
    query = Query(f"\nQuestion: Find all variables that are assigned the value {value} in the text above.",
                  f"Answer: According to the chain of variable assignment in the text above, {VT_HOPS + 1} variables "
                  f"are assigned the value {value}, they are:", " " + " ".join(names))
    return _haystack_sample(tokens, length, facts, query, names, rng, sentences, ordered=True)


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(3))] = None
    return list(words)


def _largest_fitting(tokens: SentenceTokens, length: int,
                     build: Callable[[int], tuple[str, list[str]]]) -> RulerSample | None:
    """The sample for the largest ``n`` whose prompt plus answer budget fits ``length`` (doubling, then
    bisection); ``None`` when not even ``n = 0`` fits."""

    def fits(n: int) -> RulerSample | None:
        text, answers = build(n)
        ids = list(tokens.bos) + tokens.tokenizer(text, add_special_tokens=False)["input_ids"]
        budget = _answer_budget(tokens, answers)
        return RulerSample(ids, answers, budget) if len(ids) + budget <= length else None

    best = fits(0)
    if best is None:
        return None
    low, high = 0, 1
    while (sample := fits(high)) is not None:
        best, low, high = sample, high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if (sample := fits(middle)) is not None:
            best, low = sample, middle
        else:
            high = middle
    return best


def _common_words(tokens: SentenceTokens, length: int, rng: random.Random) -> RulerSample:
    """RULER's repeats (common x6, rare x1 below 4k tokens; x30 and x3 above); at lengths too short for
    that, common words repeat fewer times (down to twice)."""
    default_repeats, rare_repeats = (6, 1) if length < 4096 else (30, 3)
    seed = rng.random()

    def builder(common_repeats: int) -> Callable[[int], tuple[str, list[str]]]:
        def build(rare: int) -> tuple[str, list[str]]:
            local = random.Random(f"{seed}:{rare}")
            words = _pseudo_words(local, 10 + rare)
            listing = words[:10] * common_repeats + words[10:] * rare_repeats
            local.shuffle(listing)
            numbered = " ".join(f"{i + 1}. {w}" for i, w in enumerate(listing))
            prompt = (f"Below is a numbered list of words. In these words, some appear more often than others. "
                      f"Memorize the ones that appear most often.\n{numbered}\nQuestion: What are the 10 most common "
                      f"words in the above list? Answer: The top 10 words that appear most often in the list are:")
            return prompt, words[:10]
        return build

    for repeats in range(default_repeats, 1, -1):
        if (sample := _largest_fitting(tokens, length, builder(repeats))) is not None:
            return sample
    raise UserError(f"ruler: length {length} is too short for task cwe")


def _frequent_words(tokens: SentenceTokens, length: int, rng: random.Random) -> RulerSample:
    seed = rng.random()
    vocab = ["...."] + _pseudo_words(random.Random(seed), 2000)
    norm = sum(k ** -FWE_ALPHA for k in range(1, len(vocab) + 1))

    def build(total: int) -> tuple[str, list[str]]:
        words = [w for k, w in enumerate(vocab, 1) for _ in range(int(total * k ** -FWE_ALPHA / norm))]
        random.Random(f"{seed}:{total}").shuffle(words)
        return (f"Read the following coded text and track the frequency of each coded word. Find the three most "
                f"frequently appeared coded words. {' '.join(words)}\nQuestion: Do not provide any explanation. "
                f"Please ignore the dots '....'. What are the three most frequently appeared words in the above "
                f"coded text? Answer: According to the coded text above, the three most frequently appeared words "
                f"are:"), vocab[1:4]

    if (sample := _largest_fitting(tokens, length, build)) is None:
        raise UserError(f"ruler: length {length} is too short for task fwe")
    return sample


def ruler_sample(task: str, tokens: SentenceTokens, length: int, rng: random.Random,
                 sentences: tuple[str, ...] | None, digits: int = 5) -> RulerSample:
    """One prompt of ``task`` with at most ``length`` tokens including the answer budget."""
    try:
        if task.startswith("niah_"):
            return _needle_family(task, tokens, length, rng, sentences, digits)
        if task == "vt":
            return _variable_tracking(tokens, length, rng, sentences, digits)
    except TooShort as exc:  # the answer's budget comes off the length before the haystack is built
        raise UserError(f"ruler task {task}: length {length} is too short for its needles, question and answer "
                        f"({exc.needed + length - exc.length} tokens)") from None
    if task == "cwe":
        return _common_words(tokens, length, rng)
    if task == "fwe":
        return _frequent_words(tokens, length, rng)
    raise UserError(f"ruler: unknown task {task!r}")


def string_match_all(prediction: str, references: Iterable[str]) -> float:
    """RULER's metric: the fraction of references found (case-insensitively) in the prediction."""
    refs = list(references)
    text = prediction.lower()
    return sum(ref.lower() in text for ref in refs) / len(refs)
