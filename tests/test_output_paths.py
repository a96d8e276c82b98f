"""Files written beside their target and renamed over it: a write cut short leaves the previous file whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import UserError
from toolkit.output_paths import atomic_dir, atomic_file, write_text


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path: Path) -> None:
    target = write_text(tmp_path / "sub" / "gpu-check.md", "first\n")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as partial:
        partial.write_text("half of the sec")
        raise KeyboardInterrupt
    assert target.read_text() == "first\n" and [p.name for p in target.parent.iterdir()] == ["gpu-check.md"]
    assert write_text(target, "second, ünicode\n") == target
    assert target.read_text(encoding="utf-8") == "second, ünicode\n"
    assert [p.name for p in target.parent.iterdir()] == ["gpu-check.md"]


def test_a_folder_where_the_file_goes_is_refused_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "report.md").mkdir()
    with pytest.raises(UserError, match=r"report.md: is a folder, where a file is to be written"):
        write_text(tmp_path / "report.md", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_a_folder_replaced_through_a_link_stays_linked(tmp_path: Path) -> None:
    (tmp_path / "big" / "corpus").mkdir(parents=True)
    (tmp_path / "big" / "corpus" / "old.txt").write_text("old")
    (tmp_path / "corpus").symlink_to(tmp_path / "big" / "corpus")
    with atomic_dir(tmp_path / "corpus") as partial:
        (partial / "new.txt").write_text("new")
    assert (tmp_path / "corpus").is_symlink()
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["corpus"]
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["new.txt"]
