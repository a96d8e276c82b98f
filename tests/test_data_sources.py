"""Text sources from local JSONL, parquet and text files: documents, epochs, sharding and user errors."""

import json
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolkit.data.batches import stage_batches
from toolkit.data.packing import IGNORE_INDEX
from toolkit.data.sources import text_documents
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.recipe.schema import DataSpec, TokenizerTraining

TEXTS = [f"Document number {i}: the quiet river {'flows ' * i}at dawn." for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0)


def _write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def _decoded(tokenizer, docs):
    return [tokenizer.decode(d.input_ids[1:-1]) for d in docs]


def test_jsonl_documents_carry_bos_eos_and_labels(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(_write_jsonl(tmp_path / "a.jsonl", TEXTS)))
    docs = list(islice(text_documents(spec, tokenizer, seed=0), len(TEXTS)))
    assert sorted(_decoded(tokenizer, docs)) == sorted(TEXTS)
    for doc in docs:
        assert doc.input_ids[0] == tokenizer.bos_token_id and doc.input_ids[-1] == tokenizer.eos_token_id
        assert doc.labels == [IGNORE_INDEX] + doc.input_ids[1:]


def test_epochs_cycle_forever_and_reshuffle(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(_write_jsonl(tmp_path / "a.jsonl", TEXTS)))
    texts = _decoded(tokenizer, islice(text_documents(spec, tokenizer, seed=0), 4 * len(TEXTS)))
    epochs = [texts[i:i + len(TEXTS)] for i in range(0, len(texts), len(TEXTS))]
    assert all(sorted(epoch) == sorted(TEXTS) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1
    assert texts == _decoded(tokenizer, islice(text_documents(spec, tokenizer, seed=0), 4 * len(TEXTS)))


def test_parquet_file_with_a_custom_field(tokenizer, tmp_path):
    pq.write_table(pa.table({"body": TEXTS, "n": list(range(len(TEXTS)))}), tmp_path / "a.parquet")
    spec = DataSpec(source="parquet", path=str(tmp_path / "a.parquet"), text_field="body")
    assert sorted(_decoded(tokenizer, islice(text_documents(spec, tokenizer, 0), len(TEXTS)))) == sorted(TEXTS)


def test_text_folder_gives_one_document_per_file(tokenizer, tmp_path):
    for i, text in enumerate(TEXTS[:3]):
        (tmp_path / f"{i}.txt").write_text(text + "\nsecond line\n")
    (tmp_path / "notes.csv").write_text("not,read\n")
    spec = DataSpec(source="text", path=str(tmp_path))
    assert sorted(_decoded(tokenizer, islice(text_documents(spec, tokenizer, 0), 3))) == sorted(
        t + "\nsecond line\n" for t in TEXTS[:3])


def test_stage_batches_from_jsonl(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(_write_jsonl(tmp_path / "a.jsonl", TEXTS)), packing="pack")
    batch = next(stage_batches(spec, tokenizer, seq_len=64, batch_size=3, seed=0))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (3, 64)
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORE_INDEX).all()
    assert set(batch["input_ids"][starts].tolist()) - {tokenizer.pad_token_id} == {tokenizer.bos_token_id}


def test_missing_file_is_a_user_error(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match=r"^train\.data\.path: no such file: .*missing\.jsonl$"):
        next(text_documents(spec, tokenizer, 0))


def test_folder_without_matching_files_is_a_user_error(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("text, not parquet")
    with pytest.raises(UserError, match=r"^train\.data\.path: no \.parquet files in "):
        next(text_documents(DataSpec(source="parquet", path=str(tmp_path)), tokenizer, 0))


def test_missing_text_field_is_a_user_error(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(_write_jsonl(tmp_path / "a.jsonl", TEXTS, field="content")))
    with pytest.raises(UserError, match=r"^train\.data\.text_field: no field 'text' in .*\(fields: content, id\)$"):
        next(text_documents(spec, tokenizer, 0))


def test_unreadable_or_empty_files_are_user_errors(tokenizer, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(UserError, match=r"^train\.data\.path: cannot read .*bad\.jsonl: "):
        list(islice(text_documents(DataSpec(source="jsonl", path=str(tmp_path / "bad.jsonl")), tokenizer, 0), 3))
    _write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(UserError, match=r"^train\.data\.path: no text documents in .*empty\.jsonl$"):
        next(text_documents(DataSpec(source="jsonl", path=str(tmp_path / "empty.jsonl")), tokenizer, 0))


def test_the_schema_offers_exactly_the_local_formats_that_have_readers() -> None:
    from typing import get_args

    from toolkit.data.local_files import LOCAL_FORMATS
    from toolkit.recipe.schema import SourceSpec

    offered = set(get_args(SourceSpec.model_fields["source"].annotation))
    assert offered - {"synthetic", "hub"} == LOCAL_FORMATS
