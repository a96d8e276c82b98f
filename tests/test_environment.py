"""What a run records of the machine it ran on."""

from __future__ import annotations

import pytest

from toolkit.environment import ALLOCATOR_VARIABLES, allocator_setting


def test_the_allocator_setting_names_the_variable_torch_reads_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert allocator_setting() == "torch's default"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert allocator_setting() == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:512")  # the current name wins over the old one
    assert allocator_setting() == "PYTORCH_ALLOC_CONF=max_split_size_mb:512"
