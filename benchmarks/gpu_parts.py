"""Files for a GPU machine that takes at most 64 MiB per call: one gzip'd tar of them cut into numbered parts with
a sha256 manifest, sent one call after another, put back together and checked there. ``make gpu-parts`` (the
demo's model and corpus; ``make gpu-demo`` joins them first) and ``make wheelhouse-fa4`` (flash-attn-4's wheels;
``make gpu-check`` and ``make gpu-demo`` join and install them). Standard library only: it runs before anything is
installed. A missing or damaged part, or a missing manifest: one line naming it, exit 2.

    python benchmarks/gpu_parts.py split --out .gpu-parts models/smollm2-135m-instruct data/corpus
    python benchmarks/gpu_parts.py join --parts .gpu-parts --into .
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.errors import UserError, command_parser, exit_on_user_error
from toolkit.file_reading import sha256_of
from toolkit.output_paths import check_writable, write_text

MANIFEST = "manifest.json"
PART_MIB = 56
"""A 56 MiB part, the manifest and the working tree fit a 64 MiB call; the wheelhouse (7 MiB) travels with the last,
smaller part."""


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds: the packed paths, the whole archive's sha256 and each part."""

    paths: list[str]
    archive_sha256: str
    parts: list[Part]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
            return cls(data["paths"], data["archive_sha256"], [Part(**part) for part in data["parts"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a parts manifest ({type(exc).__name__}: {exc})") from exc


class PartsWriter:
    """A write-only stream that cuts what it is given into ``part-NN`` files of ``size`` bytes, hashing each."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self.parts: list[Part] = []
        self.whole = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._digest, self._used = hashlib.sha256(), 0

    def _name(self) -> str:
        return f"part-{len(self.parts):02d}"

    def _next(self) -> None:
        self._close()
        self._file, self._digest, self._used = (self.folder / self._name()).open("wb"), hashlib.sha256(), 0

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts.append(Part(self._name(), self._used, self._digest.hexdigest()))
            self._file = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None or self._used == self.size:
                self._next()
            take = view[:self.size - self._used]
            assert self._file is not None
            self._file.write(take)
            self._digest.update(take)
            self.whole.update(take)
            self._used += len(take)
            view = view[len(take):]
        return len(data)

    def close(self) -> None:
        self._close()


def split(paths: list[Path], out: Path, part_mib: int = PART_MIB, root: Path = Path(".")) -> Manifest:
    """Pack ``paths`` (relative to ``root``) into ``out``'s parts and manifest; returns the manifest."""
    missing = [str(root / path) for path in paths if not (root / path).exists()]
    if missing:
        raise UserError(f"nothing to pack at {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    writer = PartsWriter(out, part_mib << 20)
    with gzip.GzipFile(fileobj=cast(BinaryIO, writer), mode="wb", compresslevel=1, mtime=0) as packed:
        with tarfile.open(fileobj=packed, mode="w|") as archive:
            for path in paths:
                archive.add(root / path, arcname=str(path))
    writer.close()
    manifest = Manifest([str(path) for path in paths], writer.whole.hexdigest(), writer.parts)
    write_text(out / MANIFEST, json.dumps(asdict(manifest), indent=1) + "\n")
    return manifest


class PartsReader:
    """The parts one after another as one read-only stream, hashing the whole."""

    def __init__(self, files: list[Path]):
        self.whole = hashlib.sha256()
        self._chunks = self._read(files)
        self._buffer = b""

    @staticmethod
    def _read(files: list[Path]) -> Iterator[bytes]:
        for path in files:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")  # noqa: B023  (used before f closes)

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self.whole.update(chunk)
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else size
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def check_parts(folder: Path) -> Manifest:
    """The manifest in ``folder``, after checking every part it lists is there with its sha256 (a
    :class:`UserError` naming the missing and damaged parts otherwise)."""
    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder / MANIFEST}: not there (split the files where they are, then send it with the "
                        "parts: docs/benchmarks.md)")
    manifest = Manifest.read(folder / MANIFEST)
    bad = []
    for part in manifest.parts:
        path = folder / part.name
        if not path.is_file():
            bad.append(f"{part.name} missing")
        elif path.stat().st_size != part.bytes or sha256_of(path) != part.sha256:
            bad.append(f"{part.name} damaged (sha256 differs)")
    if bad:
        raise UserError(f"{folder}: {', '.join(bad)}; send those parts again")
    return manifest


def join(folder: Path, into: Path) -> list[str]:
    """Check the parts in ``folder``, unpack them below ``into`` and check the whole; the paths unpacked."""
    manifest = check_parts(folder)
    reader = PartsReader([folder / part.name for part in manifest.parts])
    with gzip.GzipFile(fileobj=cast(BinaryIO, reader), mode="rb") as packed:
        with tarfile.open(fileobj=packed, mode="r|") as archive:
            archive.extractall(into, filter="data")
    reader.read()  # what the unpacking left unread (tar padding), into the hash
    if reader.whole.hexdigest() != manifest.archive_sha256:
        raise UserError(f"{folder}: the joined parts' sha256 differs from {MANIFEST}'s")
    return manifest.paths


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/gpu_parts.py")
    sub = parser.add_subparsers(dest="command", required=True)
    cut = sub.add_parser("split")
    cut.add_argument("paths", nargs="+", type=Path)
    cut.add_argument("--out", type=Path, default=Path(".gpu-parts"))
    cut.add_argument("--part-mib", type=int, default=PART_MIB)
    put = sub.add_parser("join")
    put.add_argument("--parts", type=Path, default=Path(".gpu-parts"))
    put.add_argument("--into", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.command == "split":
            if args.part_mib < 1:
                raise UserError(f"--part-mib: {args.part_mib} is not a positive number of MiB")
            check_writable(args.out, "--out")
            manifest = split(args.paths, args.out, args.part_mib)
            sizes = ", ".join(f"{part.name} {part.bytes / 2**20:.1f} MiB" for part in manifest.parts)
            print(f"{len(manifest.parts)} parts in {args.out} ({sizes}; "
                  f"{sum(p.bytes for p in manifest.parts) / 2**20:.1f} MiB), sha256 {manifest.archive_sha256}")
        else:
            check_writable(args.into, "--into")
            print(f"joined and checked: {', '.join(join(args.parts, args.into))}")


if __name__ == "__main__":
    main()
