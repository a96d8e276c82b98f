"""``make wheelhouse-fa4`` and the GPU side of ``make gpu-check``: flash-attn-4's pinned wheels cut into parts with a
sha256 manifest, joined byte for byte, a missing or damaged part (or manifest) one line naming it with exit 2, and
the join and install in the check's flow only where the manifest was sent. Fake wheel files; nothing downloaded."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_parts import MANIFEST, main  # noqa: E402
from tests.runs import make_n  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _make_n(*args: str) -> str:
    """What ``make -n ARGS`` would run, from the repository root."""
    done = make_n(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pins() -> list[str]:
    """The FA4 wheels ``make wheelhouse-fa4`` downloads (its pip command's ``NAME==VERSION`` arguments)."""
    return re.findall(r"\S+==\S+", _make_n("wheelhouse-fa4").split(" -d .whl-fa4 ")[1])


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """Fake wheels named as the pins, 3.5 MiB of incompressible bytes in all (the cu13 libraries the largest)."""
    folder = tmp_path / ".whl-fa4"
    folder.mkdir()
    for pin in _pins():
        name, version = pin.split("==")
        size = 3 << 20 if name.endswith("cu13") else 64 << 10
        (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(os.urandom(size))
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def _join_error(parts: Path, into: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``gpu_parts.py join`` prints when it refuses, after checking it exits 2."""
    with pytest.raises(SystemExit) as stopped:
        main(["join", "--parts", str(parts), "--into", str(into)])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    return line


def test_the_pins_are_exact_and_cuda_13() -> None:
    pins = _pins()
    names = [pin.split("==")[0] for pin in pins]
    assert len(set(names)) == len(names) == 8  # one version of each: two stop the whole install
    assert "flash-attn-4==4.0.0b36" in pins and "nvidia-cutlass-dsl-libs-cu13==4.8.1" in pins
    assert not any(name.endswith("cu12") for name in names)


def test_the_wheels_travel_as_parts_and_come_back_byte_for_byte(wheels: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["split", "--out", ".fa4-parts", "--part-mib", "1", ".whl-fa4"])
    assert re.match(r"4 parts in \.fa4-parts \(part-00 1\.0 MiB, .*part-03 0\.\d MiB; 3\.\d MiB\), sha256 [0-9a-f]{64}",
                    capsys.readouterr().out)
    out = tmp_path / "gpu"
    main(["join", "--parts", ".fa4-parts", "--into", str(out)])
    assert capsys.readouterr().out == "joined and checked: .whl-fa4\n"
    assert _digests(out / ".whl-fa4") == _digests(wheels)


def test_a_missing_or_damaged_part_is_one_line_and_exit_2(wheels: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    parts, out = tmp_path / ".fa4-parts", tmp_path / "gpu"
    main(["split", "--out", str(parts), "--part-mib", "1", ".whl-fa4"])
    (parts / "part-01").unlink()
    assert _join_error(parts, out, capsys) == f"error: {parts}: part-01 missing; send those parts again"
    main(["split", "--out", str(parts), "--part-mib", "1", ".whl-fa4"])
    damaged = bytearray((parts / "part-02").read_bytes())
    damaged[-1] ^= 1
    (parts / "part-02").write_bytes(bytes(damaged))
    assert _join_error(parts, out, capsys) == (f"error: {parts}: part-02 damaged (sha256 differs); "
                                               "send those parts again")
    (parts / MANIFEST).write_text("{")
    assert _join_error(parts, out, capsys).startswith(f"error: {parts / MANIFEST}: not a parts manifest")
    (parts / MANIFEST).unlink()
    assert _join_error(parts, out, capsys).startswith(f"error: {parts / MANIFEST}: not there")
    assert not out.exists()


def test_gpu_check_joins_and_installs_them_only_where_the_manifest_was_sent(tmp_path: Path) -> None:
    without = _make_n("gpu-check", f"FA4_PARTS={tmp_path}")
    assert "flash-attn-4 not installed" in without and "gpu_parts.py join" not in without
    assert ".whl-fa4" not in without
    (tmp_path / MANIFEST).write_text("{}")
    sent = _make_n("gpu-check", f"FA4_PARTS={tmp_path}").splitlines()
    join = sent.index(f"python3 benchmarks/gpu_parts.py join --parts {tmp_path} --into .")
    install = next(i for i, line in enumerate(sent) if " pip install " in line)
    assert join < install and sent[install].endswith("--target /tmp/gpu-check-site .whl/*.whl .whl-fa4/*.whl")
    assert "PYTHONPATH=/tmp/gpu-check-site:/tmp/gpu-check-site/nvidia_cutlass_dsl/dsl_packages " in sent[-1]
