"""Synthetic key-value retrieval documents for training, built with the evaluation's own needle code.

``passkey``: one needle in the haystack, asked for at the end. ``multikey``: ``num_keys`` needles with distinct
keys at random depths, one of them asked for, the rest distractors. Every document is the haystack prompt,
then the answer and eos, and fits in ``seq_len`` tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from toolkit.data.needle import KEY_NAMES, SentenceTokens, build_haystack, draw_depth, filler_sentence, make_needles
from toolkit.data.packing import IGNORE_INDEX, Document
from toolkit.data.stream_state import SourceCursor
from toolkit.errors import UserError
from toolkit.recipe.data_spec import TRAIN_DATA, SourceSpec

FILLER_POOL_SIZE = 2048
"""Distinct filler sentences a stream draws from; each is tokenised once, so long documents stay cheap."""


def _labels(input_ids: list[int], answer_start: int, loss_on: str) -> list[int]:
    if loss_on == "all":
        return [IGNORE_INDEX] + input_ids[1:]
    return [IGNORE_INDEX] * answer_start + input_ids[answer_start:]


def synthetic_documents(spec: SourceSpec, tokenizer, seq_len: int, seed: int, cursor: SourceCursor | None = None,
                        label: str = TRAIN_DATA) -> Iterator[Document]:
    """An endless, seeded stream of needle documents of ``min_length_fraction * seq_len`` to ``seq_len`` tokens.

    Labels cover the answer and eos (``loss_on: answer``) or every token but the first (``loss_on: all``).
    ``cursor``: a resumed stream's generator state (the filler pool is drawn from ``seed`` again), kept up to date.
    ``label``: where the recipe holds ``spec``; more keys than :data:`KEY_NAMES` or a document that cannot fit
    ``seq_len`` is a :class:`UserError` naming its field, at the first draw.
    """
    count = 1 if spec.task == "passkey" else spec.num_keys
    if count > len(KEY_NAMES):
        raise UserError(f"{label}.num_keys: {count} is more than the {len(KEY_NAMES)} distinct keys available")
    cursor = SourceCursor() if cursor is None else cursor
    first = random.Random(seed)
    tokens = SentenceTokens(tokenizer)
    pool = [filler_sentence(first) for _ in range(FILLER_POOL_SIZE)]
    rng = cursor.rng = first if cursor.rng is None else cursor.rng
    shortest_filler = min(len(tokens(sentence)) for sentence in pool)
    while True:
        needles = make_needles(rng, count)
        asked = rng.choice(needles)
        answer = list(tokens(asked.answer))
        longest = seq_len - len(answer) - 1
        fixed = [tokens(n.sentence) for n in needles] + [tokens(asked.question)]
        shortest_prompt = len(tokens.bos) + sum(map(len, fixed))
        if shortest_prompt > longest:
            raise UserError(f"{label}.task: a {spec.task} document with {count} key(s) needs "
                            f"{shortest_prompt + len(answer) + 1} tokens, more than seq_len {seq_len}")
        length = rng.randint(max(shortest_prompt, min(math.ceil(spec.min_length_fraction * seq_len), longest)),
                             longest)
        filler = rng.choices(pool, k=length // shortest_filler + 1)
        depths = [draw_depth(rng, spec.edge_depth_fraction) for _ in needles]
        haystack = build_haystack(tokens, length, needles, depths, asked, rng, filler)
        input_ids = haystack.input_ids + answer + [tokenizer.eos_token_id]
        yield Document(input_ids, _labels(input_ids, len(haystack.input_ids), spec.loss_on))
