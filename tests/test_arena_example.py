"""The shipped arena example: the committed files are its generator's output, and the held-out file holds no
comparison of the training file again, and questions the training file never asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.data.arena import read_arena, write_arena
from toolkit.data.arena_example import FACTS, HELD_OUT_FACTS, _key, main, write_example

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


def test_files_already_there_are_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``arena_example DIR`` replaced DIR's files silently: now one line naming the first, exit 2, nothing written;
    ``--force`` replaces them (each written whole)."""
    (tmp_path / "test.csv").write_text("kept")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'test.csv'}: exists already (--force replaces it)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["test.csv"] and (tmp_path / "test.csv").read_text() == "kept"
    main([str(tmp_path), "--force"])
    assert (tmp_path / "test.csv").read_bytes() == (SHIPPED / "test.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv", "train.csv"]


def test_a_failed_write_keeps_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--force`` replaced train.csv before test.csv was written, so a failure there left a new training file
    beside the old held-out one: now both are written first, and a failure keeps the old pair and no temporaries."""
    old = {name: f"old {name}" for name in ("train.csv", "test.csv")}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    written: list[Path] = []

    def failing_second(rows, path):
        written.append(Path(path))
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        return write_arena(rows, path)

    monkeypatch.setattr("toolkit.data.arena_example.write_arena", failing_second)
    with pytest.raises(OSError, match="No space left"):
        main([str(tmp_path), "--force"])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old
    assert all(path.parent == tmp_path and path.name not in old for path in written)  # temporaries beside them
