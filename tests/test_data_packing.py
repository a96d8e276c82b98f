"""Packing documents into fixed-length rows, and the stage batches built from them."""

from itertools import islice, pairwise

import pytest
import torch

from toolkit.data.batches import as_batch, collate, stage_batches, target_tokens
from toolkit.data.packing import IGNORE_INDEX, Document, pack_rows
from toolkit.data.tokenizer import train_tokenizer
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import TokenizerTraining

PAD = 0
SEQ_LEN = 10


def _doc(first: int, length: int) -> Document:
    """Tokens first, first+1, ...; every label kept (packing must drop the first)."""
    ids = list(range(first, first + length))
    return Document(ids, list(ids))


def _documents_of(row: dict) -> list[tuple[list[int], list[int]]]:
    """The row split at its position restarts, as (input_ids, labels) per document."""
    starts = [t for t, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [(row["input_ids"][a:b], row["labels"][a:b]) for a, b in pairwise(starts)]


def test_pack_places_whole_documents_and_pads_the_rest():
    docs = [_doc(100, 4), _doc(200, 5), _doc(300, 3), _doc(400, 10)]
    rows = list(pack_rows(docs, SEQ_LEN, "pack", PAD))
    assert [r["input_ids"] for r in rows] == [
        list(range(100, 104)) + list(range(200, 205)) + [PAD],
        list(range(300, 303)) + [PAD] * 7,
        list(range(400, 410)),
    ]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0]
    assert rows[1]["position_ids"] == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
    assert rows[0]["labels"] == [IGNORE_INDEX, 101, 102, 103, IGNORE_INDEX, 201, 202, 203, 204, IGNORE_INDEX]
    assert rows[1]["labels"] == [IGNORE_INDEX, 301, 302] + [IGNORE_INDEX] * 7


def test_pack_cuts_long_documents_into_pieces_that_restart():
    rows = list(pack_rows([_doc(100, 23), _doc(200, 2)], SEQ_LEN, "pack", PAD))
    assert [r["input_ids"] for r in rows] == [
        list(range(100, 110)), list(range(110, 120)), [120, 121, 122, 200, 201] + [PAD] * 5]
    for row in rows:
        for ids, labels in _documents_of(row):  # pieces and padding alike start with an ignored label
            assert labels == ([IGNORE_INDEX] * len(ids) if ids[0] == PAD else [IGNORE_INDEX] + ids[1:])
    assert rows[2]["position_ids"] == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]


def test_every_row_has_the_same_shape_and_keeps_every_token():
    lengths = [7, 1, 15, 3, 9, 10, 2, 31, 4]
    docs = [_doc(1000 * (i + 1), n) for i, n in enumerate(lengths)]
    rows = list(pack_rows(docs, SEQ_LEN, "pack", PAD))
    assert all(len(r[key]) == SEQ_LEN for r in rows for key in ("input_ids", "labels", "position_ids"))
    kept = [t for r in rows for t in r["input_ids"] if t != PAD]
    assert kept == [t for d in docs for t in d.input_ids]
    trained = sum(label != IGNORE_INDEX for r in rows for label in r["labels"])
    pieces = sum(-(-n // SEQ_LEN) for n in lengths)
    assert trained == sum(lengths) - pieces  # one ignored label per document piece


def test_split_gives_each_document_its_own_rows():
    rows = list(pack_rows([_doc(100, 12), _doc(200, 3)], SEQ_LEN, "split", PAD))
    assert [r["input_ids"] for r in rows] == [
        list(range(100, 110)), [110, 111] + [PAD] * 8, [200, 201, 202] + [PAD] * 7]
    assert rows[1]["labels"] == [IGNORE_INDEX, 111] + [IGNORE_INDEX] * 8
    assert rows[1]["position_ids"] == [0, 1] + list(range(8))


def test_pad_truncates_or_pads_one_document_per_row():
    rows = list(pack_rows([_doc(100, 12), _doc(200, 3)], SEQ_LEN, "pad", PAD))
    assert [r["input_ids"] for r in rows] == [list(range(100, 110)), [200, 201, 202] + [PAD] * 7]
    assert rows[0]["labels"] == [IGNORE_INDEX] + list(range(101, 110))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0)


def test_rows_collate_into_a_batch_and_a_stray_key_is_refused():
    batch = collate(list(pack_rows([_doc(100, 4), _doc(200, 5), _doc(300, 3)], SEQ_LEN, "pack", PAD)))
    assert batch["input_ids"].shape == (2, SEQ_LEN)
    assert batch["sources"].tolist() == [[0] * 9 + [-1], [0] * 3 + [-1] * 7]  # padding: PAD_SOURCE
    assert int(target_tokens(batch)) == 3 + 4 + 2  # every label but each document's first
    with pytest.raises(ValueError, match=r"not \['attention_mask', 'input_ids', 'labels', 'position_ids'\]"):
        as_batch({"attention_mask": batch["sources"] >= 0, "input_ids": batch["input_ids"],
                  "labels": batch["labels"], "position_ids": batch["position_ids"]})


def test_stage_batches_shapes_and_determinism(tokenizer):
    spec = DataSpec(task="multikey", num_keys=3)
    first = list(islice(stage_batches(spec, tokenizer, seq_len=128, batch_size=4, seed=7), 3))
    again = list(islice(stage_batches(spec, tokenizer, seq_len=128, batch_size=4, seed=7), 3))
    for batch, same in zip(first, again, strict=True):
        assert set(batch) == {"input_ids", "labels", "position_ids"}  # sources counted and gone
        for key in ("input_ids", "labels", "position_ids"):
            assert batch[key].dtype == torch.long and batch[key].shape == (4, 128)
            assert torch.equal(batch[key], same[key])
    assert not torch.equal(first[0]["input_ids"], first[1]["input_ids"])
    assert (first[0]["labels"] != IGNORE_INDEX).sum() >= 4 * 6  # every row holds at least one 5-digit answer + eos
