"""Synthetic passkey / multi-key documents: lengths, labels, needles, determinism."""

import math
import re
from itertools import islice

import pytest

from toolkit.data import needle
from toolkit.data.needle import KEY_NAMES
from toolkit.data.packing import IGNORE_INDEX
from toolkit.data.synthetic import synthetic_documents
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import TokenizerTraining

SEQ_LEN = 256
NEEDLE = re.compile(r"The pass key for (\w+) is (\d+)\.")
QUESTION = re.compile(r"\nWhat is the pass key for (\w+)\? The pass key for \1 is$")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0)


def _docs(tokenizer, count=20, seq_len=SEQ_LEN, seed=0, **data):
    return list(islice(synthetic_documents(DataSpec(**data), tokenizer, seq_len, seed), count))


def _parts(tokenizer, doc):
    """(prompt text, trained text) of a document."""
    start = next(i for i, label in enumerate(doc.labels) if label != IGNORE_INDEX)
    assert doc.labels[start:] == doc.input_ids[start:]  # unshifted labels, one contiguous trained span
    return tokenizer.decode(doc.input_ids[:start], skip_special_tokens=True), tokenizer.decode(doc.labels[start:])


def _longest_filler_sentence(tokenizer) -> int:
    """Tokens in the longest filler sentence: byte-level BPE never merges across words, so word maxima add up."""
    def most(words):
        return max(len(tokenizer(f" {w}", add_special_tokens=False)["input_ids"]) for w in words)
    fixed = len(tokenizer(" The the.", add_special_tokens=False)["input_ids"])
    return fixed + 2 * most(needle._ADJECTIVES) + 2 * most(needle._NOUNS) + most(needle._VERBS) + most(needle._TAILS)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_lengths_stay_in_bounds(tokenizer, fraction):
    lengths = [len(d.input_ids) for d in _docs(tokenizer, min_length_fraction=fraction)]
    assert max(lengths) <= SEQ_LEN
    # the haystack falls short of its drawn length by less than one filler sentence
    assert min(lengths) > math.ceil(fraction * SEQ_LEN) - _longest_filler_sentence(tokenizer)
    assert len(set(lengths)) > 5  # lengths are drawn, not fixed


def test_passkey_trains_on_the_answer_only(tokenizer):
    for doc in _docs(tokenizer, task="passkey"):
        prompt, trained = _parts(tokenizer, doc)
        (key, value), = NEEDLE.findall(prompt)
        question = QUESTION.search(prompt)
        assert question is not None and question.group(1) == key
        assert trained == f" {value}{tokenizer.eos_token}"
        assert doc.input_ids[0] == tokenizer.bos_token_id and doc.input_ids[-1] == tokenizer.eos_token_id


def test_loss_on_all_trains_every_token_but_the_first(tokenizer):
    for doc in _docs(tokenizer, count=5, loss_on="all"):
        assert doc.labels == [IGNORE_INDEX] + doc.input_ids[1:]


@pytest.mark.parametrize("num_keys", [2, 5])
def test_multikey_hides_distinct_keys_and_asks_one(tokenizer, num_keys):
    asked_positions = set()
    for doc in _docs(tokenizer, task="multikey", num_keys=num_keys):
        prompt, trained = _parts(tokenizer, doc)
        needles = dict(NEEDLE.findall(prompt))
        assert len(NEEDLE.findall(prompt)) == len(needles) == num_keys
        question = QUESTION.search(prompt)
        assert question is not None
        asked = question.group(1)
        assert asked in needles and trained == f" {needles[asked]}{tokenizer.eos_token}"
        asked_positions.add(list(needles).index(asked))
    assert len(asked_positions) > 1  # the asked needle is not always the same one of the document


def test_same_seed_same_documents_other_seed_others(tokenizer):
    first = _docs(tokenizer, count=5, task="multikey", seed=3)
    assert first == _docs(tokenizer, count=5, task="multikey", seed=3)
    assert [d.input_ids for d in first] != [d.input_ids for d in _docs(tokenizer, count=5, task="multikey", seed=4)]


def test_impossible_settings_are_user_errors(tokenizer):
    with pytest.raises(UserError, match=r"^train\.data\.num_keys: "):
        _docs(tokenizer, count=1, task="multikey", num_keys=len(KEY_NAMES) + 1)
    too_short = r"^train\.data\.task: a multikey document with 3 key\(s\) needs \d+ tokens, more than seq_len 24$"
    with pytest.raises(UserError, match=too_short):
        _docs(tokenizer, count=1, seq_len=24, task="multikey", num_keys=3)
