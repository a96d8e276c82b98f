"""Tokenizers: load a checkpoint's own, or train a small byte-level BPE offline on the synthetic corpus.

The trained tokenizer behaves like Llama 3's where it matters here: byte-level BPE that round-trips any
text, ``<|begin_of_text|>`` added in front when ``add_special_tokens=True``, ``<|end_of_text|>`` as eos,
and digits split one per token (so a passkey's value is a fixed number of tokens).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from toolkit.data.needle import filler_sentence, make_needles
from toolkit.errors import UserError, reason
from toolkit.hub.ids import looks_local
from toolkit.model.sources import tokenizer_origin, tokenizer_source
from toolkit.recipe.schema import ModelSpec, TokenizerTraining

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"


def synthetic_corpus(documents: int, seed: int) -> Iterator[str]:
    """Texts made of the needle task's parts: filler, needle sentences, a question and its answer."""
    rng = random.Random(seed)
    for _ in range(documents):
        needles = make_needles(rng, rng.randint(1, 4))
        sentences = [filler_sentence(rng) for _ in range(rng.randint(3, 12))] + [n.sentence for n in needles]
        rng.shuffle(sentences)
        asked = rng.choice(needles)
        yield "".join(sentences) + asked.question + asked.answer


def train_tokenizer(spec: TokenizerTraining, seed: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``spec.vocab_size`` tokens trained on ``spec.corpus_documents`` synthetic texts."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(synthetic_corpus(spec.corpus_documents, seed), trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, backend.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def load_tokenizer(spec: ModelSpec, seed: int) -> PreTrainedTokenizerBase:
    """The run's tokenizer: trained (``model.train_tokenizer``) or loaded (:func:`tokenizer_source`); always has a pad
    token."""
    source = tokenizer_source(spec)
    if source is None:
        assert spec.train_tokenizer is not None
        return train_tokenizer(spec.train_tokenizer, seed)
    origin = tokenizer_origin(spec)
    hub = "" if looks_local(source) else ", a hub id (no such folder here or beside the recipe)"
    return pretrained_tokenizer(
        source, "model.tokenizer",
        lambda exc: UserError(f"model.tokenizer: cannot load {source!r}{origin}{hub}: {reason(exc)}"),
        revision=spec.revision, trust_remote_code=spec.trust_remote_code)


def pretrained_tokenizer(source: str, field: str, failure: Callable[[Exception], UserError],
                         **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(source, **kwargs)`` with a pad token (eos where it has none): the training's
    and the evaluation's. A source that does not load is ``failure``'s one line (the caller's field and wording), a
    tokenizer with neither a pad nor an eos token one line naming ``field``."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, StrictDataclassError) as exc:  # the last: a config.json field of the wrong type
        raise failure(exc) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"{field}: {source!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
