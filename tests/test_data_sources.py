"""Text and token-id sources from local JSONL, parquet and text files: documents, epochs, order, sharding and user
errors."""

import gzip
import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import train
from toolkit.data.batches import stage_batches
from toolkit.data.local_files import FORMATS, PARQUET_BATCH_ROWS, unparsable
from toolkit.data.packing import IGNORE_INDEX
from toolkit.data.records import record_dataset
from toolkit.data.sources import SHUFFLE_BUFFER, text_documents
from toolkit.data.stream_state import SourceCursor
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import TokenizerTraining
from toolkit.recipe.yaml_files import validate_as

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


def test_parquet_rows_are_read_a_few_at_a_time_in_order(tmp_path, monkeypatch):
    """Across batch boundaries every row once, in order and numbered; pyarrow is asked for small batches only (its
    default of 65,536 rows would hold that many long documents in memory to give the first)."""
    asked = []
    iter_batches = pq.ParquetFile.iter_batches

    def recorded(self, **kwargs):
        asked.append(kwargs)
        return iter_batches(self, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recorded)
    rows = 2 * PARQUET_BATCH_ROWS + 3
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(rows)]}), tmp_path / "a.parquet", row_group_size=rows)
    read = list(FORMATS["parquet"].reader([str(tmp_path / "a.parquet")], "train.data.path"))
    assert [r["record"]["text"] for r in read] == [f"row {i}" for i in range(rows)]
    assert read[PARQUET_BATCH_ROWS]["where"] == f"{tmp_path / 'a.parquet'} row {PARQUET_BATCH_ROWS + 1}"
    assert asked == [{"batch_size": PARQUET_BATCH_ROWS}]


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


def test_token_ids_train_as_given_and_in_file_order_without_shuffle(tokenizer, tmp_path):
    """``format: tokens``: a record's ids as they are (no bos or eos), loss on all but the first; ``shuffle: false``:
    every epoch reads the file in order."""
    ids = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"input_ids": i}) + "\n" for i in ids))
    spec = DataSpec(source="jsonl", path=str(tmp_path / "ids.jsonl"), format="tokens", shuffle=False)
    docs = list(islice(text_documents(spec, tokenizer, seed=0), 3 * len(ids)))
    assert [doc.input_ids for doc in docs] == 3 * ids
    assert all(doc.labels == [IGNORE_INDEX] + doc.input_ids[1:] for doc in docs)
    shuffled = [doc.input_ids for doc in islice(text_documents(spec.model_copy(update={"shuffle": True}), tokenizer,
                                                                seed=0), 3 * len(ids))]
    assert shuffled != 3 * ids and sorted(shuffled) == sorted(3 * ids)


def test_a_record_without_token_ids_is_a_user_error(tokenizer, tmp_path):
    (tmp_path / "ids.jsonl").write_text('{"input_ids": [1, 2]}\n{"input_ids": "1 2"}\n')
    spec = DataSpec(source="jsonl", path=str(tmp_path / "ids.jsonl"), format="tokens", shuffle=False)
    with pytest.raises(UserError, match=r"^train\.data\.ids_field: 'input_ids' is not a list of token ids \(integers "
                                        r"from 0\) in .*ids\.jsonl:2$"):
        list(islice(text_documents(spec, tokenizer, 0), 2))
    with pytest.raises(UserError, match="^r.yaml: shuffle: applies to file and hub sources, not synthetic"):
        validate_as(DataSpec, {"source": "synthetic", "shuffle": False}, "r.yaml")


def test_token_ids_past_the_models_vocabulary_stop_the_run_in_one_line(tmp_path, capsys):
    (tmp_path / "ids.jsonl").write_text('{"input_ids": [5, 6, 7]}\n{"input_ids": [8, 100000]}\n')
    data = {"source": "jsonl", "path": str(tmp_path / "ids.jsonl"), "format": "tokens"}
    recipe = dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"], "data": data}, output={"dir": str(tmp_path / "run")})
    assert train(write_recipe(tmp_path, recipe), "train.max_steps=1") == 2
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")] == [
        "error: train.data: token id 100000 is not below the model's vocabulary size 320 (format: tokens ids must "
        "come from the model's tokenizer); no step was saved yet: mend the data and run again"]


def test_token_ids_of_another_tokenizer_stop_the_run_before_the_model(tmp_path, capsys):
    (tmp_path / "ids.jsonl").write_text('{"input_ids": [990, 1009]}\n')
    data = {"source": "jsonl", "path": str(tmp_path / "ids.jsonl"), "format": "tokens"}
    recipe = dict(MICRO_RECIPE, train={**MICRO_RECIPE["train"], "data": data}, output={"dir": str(tmp_path / "run")})
    assert train(write_recipe(tmp_path, recipe)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: train.data.ids_field: token id 1009 in the first record of {tmp_path / 'ids.jsonl'} is not below the "
        "model's vocabulary size 320 (format: tokens ids must come from the model's tokenizer)")
    assert not (tmp_path / "run").exists()  # stopped before the model and the run folder
    from toolkit.data.sources import check_source

    spec = DataSpec(source="jsonl", path=str(tmp_path / "ids.jsonl"), format="tokens")
    check_source(spec, train_tokenizer(TokenizerTraining(vocab_size=320, corpus_documents=50), seed=0), 64,
                 "train.data", vocab_size=1024)  # an embedding padded past the tokenizer holds them


def test_missing_file_is_a_user_error(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match=r"^train\.data\.path: no such file: .*missing\.jsonl$"):
        next(text_documents(spec, tokenizer, 0))
    relative = DataSpec(source="jsonl", path="data/missing.jsonl")  # neither beside the recipe nor here
    with pytest.raises(UserError) as stop:
        next(text_documents(relative, tokenizer, 0))
    assert str(stop.value) == (f"train.data.path: no such file: data/missing.jsonl (a relative path is read beside "
                               f"the recipe, else in {Path.cwd()})")


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


BROKEN = '{"text": "a scrape cut off'
"""A JSONL line that does not parse, and why: ``json.loads``' reason (the string runs into the line's newline)."""
CUT_OFF = "Invalid control character at: line 1 column 27 (char 26)"


def _with_broken_line(path: Path, texts: list[str], at: int) -> Path:
    """JSONL of ``texts`` with :data:`BROKEN` before ``texts[at]`` (line ``at + 1``)."""
    lines = [json.dumps({"text": text}) for text in texts]
    path.write_text("\n".join(lines[:at] + [BROKEN] + lines[at:]) + "\n")
    return path


def test_a_line_that_does_not_parse_stops_the_run_naming_file_and_line(tokenizer, tmp_path: Path) -> None:
    path = _with_broken_line(tmp_path / "a.jsonl", TEXTS, 3)
    with pytest.raises(UserError) as stop:
        list(islice(text_documents(DataSpec(source="jsonl", path=str(path)), tokenizer, 0), len(TEXTS)))
    assert str(stop.value) == f"train.data.path: cannot read {path}: line 4: {CUT_OFF}"


def test_bad_rows_skip_skips_and_counts_a_line_that_does_not_parse(tokenizer, tmp_path: Path) -> None:
    """The other lines make the documents; the broken one is counted once an epoch, as a record read (where a resumed
    stream starts)."""
    path = _with_broken_line(tmp_path / "a.jsonl", TEXTS, 3)
    cursor = SourceCursor()
    docs = text_documents(DataSpec(source="jsonl", path=str(path), bad_rows="skip", shuffle=False), tokenizer, 0,
                          cursor=cursor)
    assert _decoded(tokenizer, islice(docs, len(TEXTS))) == TEXTS
    assert (cursor.epoch, cursor.records, cursor.skipped) == (0, len(TEXTS) + 1, 1)
    assert _decoded(tokenizer, islice(docs, len(TEXTS))) == TEXTS
    assert (cursor.epoch, cursor.records, cursor.skipped) == (1, len(TEXTS) + 1, 2)


def test_a_line_that_does_not_parse_comes_through_the_shuffled_stream_as_read(tmp_path: Path) -> None:
    """``datasets``' stream (from_generator, shuffle, set_epoch) hands on the reader's row for a broken line as it is:
    no record, and the line naming its file and line."""
    path = _with_broken_line(tmp_path / "a.jsonl", TEXTS, 3)
    read = list(FORMATS["jsonl"].reader([str(path)], "train.data.path"))
    assert [unparsable(row) for row in read] == [None] * 3 + [f"train.data.path: cannot read {path}: line 4: "
                                                              f"{CUT_OFF}"] + [None] * 3
    assert read[3]["record"] is None and read[3]["where"] == f"{path}:4"
    dataset = record_dataset(DataSpec(source="jsonl", path=str(path)), "train.data")
    dataset = dataset.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        assert sorted(dataset, key=lambda row: row["where"]) == read


def test_a_source_of_broken_lines_alone_names_the_last(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(f"{BROKEN}\n\n{{broken\n")
    spec = DataSpec(source="jsonl", path=str(path), bad_rows="skip", shuffle=False)
    with pytest.raises(UserError) as stop:
        next(text_documents(spec, tokenizer, 0))
    assert str(stop.value) == (f"train.data.path: no text documents in {path}; 2 record(s) skipped as bad, the last: "
                               f"train.data.path: cannot read {path}: line 3: Expecting property name enclosed in "
                               "double quotes: line 1 column 2 (char 1)")


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("latin.jsonl", b'{"text": "fine"}\n{"text": "\xe9"}\n', "'utf-8' codec can't decode byte 0xe9 in position 27"),
    ("array.json", b'[{"text": "fine"}, {broken]', "Expecting property name enclosed in double quotes: line 1 column"),
    ("cut.jsonl.gz", gzip.compress(b'{"text": "fine"}\n' * 500)[:40], "Compressed file ended before the end")])
def test_a_file_that_cannot_be_read_stops_the_run_with_bad_rows_skip(name: str, content: bytes, problem: str,
                                                                     tokenizer, tmp_path: Path) -> None:
    """Not a row: the whole file is in doubt."""
    (tmp_path / name).write_bytes(content)
    spec = DataSpec(source="jsonl", path=str(tmp_path / name), bad_rows="skip")
    with pytest.raises(UserError) as stop:
        next(text_documents(spec, tokenizer, 0))
    assert str(stop.value).startswith(f"train.data.path: cannot read {tmp_path / name}: {problem}"), stop.value


def test_the_schema_offers_exactly_the_local_formats_that_have_readers() -> None:
    from typing import get_args

    from toolkit.data.local_files import LOCAL_FORMATS
    from toolkit.recipe.data_spec import SourceSpec

    offered = set(get_args(SourceSpec.model_fields["source"].annotation))
    assert offered - {"synthetic", "hub"} == LOCAL_FORMATS


def test_every_record_format_of_the_schema_names_the_fields_it_reads() -> None:
    """``FORMAT_FIELDS`` and the readers that check a record before its tokenizer have an entry for each
    ``SourceSpec.format`` (a new format without one would fail on its first record), the fields naming settings of
    ``SourceSpec``."""
    from typing import get_args

    from toolkit.data.formats import _READERS, FORMAT_FIELDS
    from toolkit.recipe.data_spec import SourceSpec

    assert set(get_args(SourceSpec.model_fields["format"].annotation)) == set(FORMAT_FIELDS) == set(_READERS)
    assert {key for keys in FORMAT_FIELDS.values() for key in keys} <= set(SourceSpec.model_fields)


def test_a_json_file_holds_an_array_one_object_or_one_a_line(tmp_path: Path) -> None:
    """``.json``: an array of records, one object written over many lines (as ``json.dump(..., indent=1)`` writes
    it), or JSON Lines under that name; each read as records, not a line that does not parse."""
    record = {"text": "one document", "id": 1}
    files = {"array.json": json.dumps([record, record]), "object.json": json.dumps(record, indent=1),
             "lines.json": f"{json.dumps(record)}\n{json.dumps(record)}\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    read = {name: [row["record"] for row in FORMATS["jsonl"].reader([str(tmp_path / name)], "train.data.path")]
            for name in files}
    assert read == {"array.json": [record, record], "object.json": [record], "lines.json": [record, record]}
