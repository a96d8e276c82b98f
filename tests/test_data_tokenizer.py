"""The locally trained tokenizer: deterministic, lossless, one digit per token, Llama-3-like specials."""

import pytest
from transformers import AutoTokenizer

from toolkit.data.tokenizer import BOS, EOS, PAD, load_tokenizer, train_tokenizer
from toolkit.errors import UserError
from toolkit.recipe.schema import ModelSpec, TokenizerTraining

SPEC = TokenizerTraining(vocab_size=400, corpus_documents=300)
TEXT = " The pass key for apple is 40213.\nWhat is the pass key for apple? The pass key for apple is"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SPEC, seed=0)


def test_same_seed_same_tokenizer(tokenizer):
    again = train_tokenizer(SPEC, seed=0)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]


def test_vocabulary_and_special_tokens(tokenizer):
    assert len(tokenizer) == SPEC.vocab_size
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


def test_bos_only_with_special_tokens(tokenizer):
    plain = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer(TEXT)["input_ids"] == [tokenizer.bos_token_id] + plain
    assert tokenizer.bos_token_id not in plain and tokenizer.eos_token_id not in plain


@pytest.mark.parametrize("text", [TEXT, "Unseen wörds, ünïcode 😀\tand  spaces\n\n", "x=3.14159; y = -2e10"])
def test_decode_round_trips(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_digits_are_one_token_each(tokenizer):
    for value in ("40213", "99999", "1234567890"):
        ids = tokenizer(f" is {value}.", add_special_tokens=False)["input_ids"]
        digits = [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).strip().isdigit()]
        assert digits == list(value)


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_load_tokenizer_trains_when_asked():
    spec = ModelSpec(init_config={"hidden_size": 64}, train_tokenizer=SPEC)
    assert load_tokenizer(spec, seed=0).get_vocab() == train_tokenizer(SPEC, seed=0).get_vocab()


def test_load_tokenizer_from_folder_falls_back_to_eos_padding(tokenizer, tmp_path):
    tokenizer.pad_token = None
    try:
        tokenizer.save_pretrained(tmp_path)
    finally:
        tokenizer.pad_token = PAD
    loaded = load_tokenizer(ModelSpec(name_or_path=str(tmp_path)), seed=0)
    assert loaded.pad_token_id == loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]


def test_missing_tokenizer_folder_is_a_user_error(tmp_path):
    missing = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(UserError, match=rf"^model\.tokenizer: .*{missing}"):
        load_tokenizer(ModelSpec(init_config={"hidden_size": 64}, tokenizer=missing), seed=0)
    with pytest.raises(UserError, match=r"model\.tokenizer: .*model\.name_or_path"):
        load_tokenizer(ModelSpec(name_or_path=missing), seed=0)


def test_folder_without_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=rf"^model\.tokenizer: cannot load '{tmp_path}'"):
        load_tokenizer(ModelSpec(name_or_path=str(tmp_path)), seed=0)
