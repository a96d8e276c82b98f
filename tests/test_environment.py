"""What a run records of the machine it ran on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from toolkit.environment import (
    ALLOCATOR_VARIABLES,
    COMMIT_VARIABLE,
    TOOLKIT_ROOT,
    allocator_setting,
    source_commit,
)


def test_the_allocator_setting_names_the_variable_torch_reads_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert allocator_setting() == "torch's default"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert allocator_setting() == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:512")  # the current name wins over the old one
    assert allocator_setting() == "PYTORCH_ALLOC_CONF=max_split_size_mb:512"


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_is_the_checkouts_and_says_when_tracked_files_changed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(COMMIT_VARIABLE, raising=False)
    assert source_commit(tmp_path) is None  # no checkout: an installed package
    monkeypatch.setenv(COMMIT_VARIABLE, " 0123456789ab\n")  # a copy of the tree, its commit given where it runs
    assert source_commit(tmp_path) == "0123456789ab"
    _git(tmp_path, "init", "-q")  # a checkout's own commit wins over what the variable says
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert source_commit(tmp_path) == head[:12]
    (tmp_path / "b.py").write_text("")  # an untracked file changes no tracked one
    assert source_commit(tmp_path) == head[:12]
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == head[:12] + "-dirty"
    if (TOOLKIT_ROOT / ".git").exists():  # this checkout (a source archive has none)
        assert (source_commit() or "").startswith(_git(TOOLKIT_ROOT, "rev-parse", "HEAD")[:12])
