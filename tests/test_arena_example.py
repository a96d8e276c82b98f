"""The shipped arena example: the committed files are its generator's output, and the held-out file holds no
comparison of the training file again, and questions the training file never asks."""

from __future__ import annotations

from pathlib import Path

from toolkit.data.arena import read_arena
from toolkit.data.arena_example import FACTS, HELD_OUT_FACTS, _key, write_example

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "arena-example"


def test_the_committed_files_are_the_generators_output(tmp_path: Path) -> None:
    for split, path in write_example(tmp_path).items():
        assert path.read_bytes() == (SHIPPED / f"{split}.csv").read_bytes(), split


def test_the_held_out_file_is_held_out() -> None:
    train, test = (read_arena(SHIPPED / f"{split}.csv")[0] for split in ("train", "test"))
    assert len(train) == 320 and len(test) == 120
    assert not {_key(row) for row in train} & {_key(row) for row in test}
    asked = {row.prompt[0] for row in train}
    new_questions = {question for question, _ in FACTS[-HELD_OUT_FACTS:]}
    assert not asked & new_questions
    assert {row.prompt[0] for row in test} & new_questions == new_questions  # each asked in the held-out file
