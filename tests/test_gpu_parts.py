"""``make gpu-parts`` / the first step of ``make gpu-demo``: files cut into numbered parts with a sha256 manifest,
put back together byte for byte, and a missing or damaged part named."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_parts import MANIFEST, join, split  # noqa: E402
from toolkit.errors import UserError  # noqa: E402


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A model-like folder (incompressible bytes) and a corpus-like one (text), 3.2 MiB in all."""
    root = tmp_path / "src"
    (root / "models" / "m").mkdir(parents=True)
    (root / "data" / "corpus").mkdir(parents=True)
    (root / "models" / "m" / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (root / "data" / "corpus" / "train.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n"
                                                                  for i in range(20000)))
    return root


def test_split_and_join_round_trip(tree: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    manifest = split([Path("models/m"), Path("data/corpus")], parts, part_mib=1, root=tree)
    sizes = [part.bytes for part in manifest.parts]
    assert len(sizes) == 4 and all(size == 1 << 20 for size in sizes[:-1]) and 0 < sizes[-1] <= 1 << 20
    assert sorted(p.name for p in parts.iterdir()) == [MANIFEST, "part-00", "part-01", "part-02", "part-03"]
    out = tmp_path / "out"
    assert join(parts, out) == ["models/m", "data/corpus"]
    for name in ("models/m/model.safetensors", "data/corpus/train.jsonl"):
        assert (out / name).read_bytes() == (tree / name).read_bytes()


def test_a_missing_or_damaged_part_is_named(tree: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    split([Path("models/m")], parts, part_mib=1, root=tree)
    (parts / "part-01").unlink()
    with pytest.raises(UserError, match="part-01 missing; send those parts again"):
        join(parts, tmp_path / "out")
    split([Path("models/m")], parts, part_mib=1, root=tree)
    damaged = bytearray((parts / "part-02").read_bytes())
    damaged[100] ^= 1
    (parts / "part-02").write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=r"part-02 damaged \(sha256 differs\)"):
        join(parts, tmp_path / "out")
    assert not (tmp_path / "out").exists()
