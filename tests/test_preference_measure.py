"""``python -m toolkit.preference.measure``'s table: one column per seed, each from that seed's own figures, written
between the markers of a doc and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from toolkit.preference.measure import BEGIN, END, main, section, write_section


def _measured(seed: int, log_loss: float) -> dict[str, Any]:
    entry = {"n": 120, "log_loss": log_loss, "log_loss_ci": [log_loss - 0.1, log_loss + 0.1], "prior": [0.2, 0.3, 0.5],
             "prior_log_loss": 1.0, "prior_log_loss_ci": [0.9, 1.1], "first_order_log_loss": 0.9,
             "first_order_log_loss_ci": [0.8, 1.0], "accuracy": 0.6, "accuracy_ci": [0.5, 0.7],
             "prior_accuracy": 0.5, "prior_accuracy_ci": [0.4, 0.6], "ece": 0.15, "swap_consistency": 0.16,
             "truncated_inputs": 0, "inputs": 240, "tokens_cut": 0}
    return {"entry": entry, "train_s": 200.0, "predict_s": 50.0, "rows": 120, "sum_error": 1e-7, "swap_gap": 0.0,
            "recipe": "recipes/smollm2-135m-arena.yaml", "suite": "arena-example/heldout", "threads": "1",
            "seed": seed, "machine": "CPU (test)", "commit": "abc", "date": "2026-12-06"}


def test_each_seed_is_a_column_of_its_own_figures(tmp_path: Path) -> None:
    text = section([_measured(0, 0.792), _measured(1, 0.801)])
    lines = text.splitlines()
    assert lines[0] == BEGIN and lines[-1] == END
    assert lines[1].startswith("Measured by `python -m toolkit.preference.measure` (recipes/smollm2-135m-arena.yaml, "
                               "seeds 0, 1, suite arena-example/heldout) on CPU (test), OMP_NUM_THREADS=1, commit abc")
    assert lines[3:5] == ["| measure | seed 0 | seed 1 |", "|---|---|---|"]
    assert "| log loss, both orders averaged | 0.792 [0.692, 0.892] | 0.801 [0.701, 0.901] |" in lines
    assert "| held-out comparisons (n) | 120 | 120 |" in lines
    one = section([_measured(0, 0.792)]).splitlines()
    assert "seed 0, suite" in one[1] and one[3:5] == ["| measure | seed 0 |", "|---|---|"]

    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    write_section(doc, text)
    assert doc.read_text() == f"before\n{text}\nafter\n"


@pytest.mark.parametrize(("seeds", "taken", "expected"), [
    (["0", "1"], "runs-seed1", "--run: {tmp}/runs-seed1 exists; measure trains a new run (delete it, or give another "
                               "--run)"),
    (["0", "0"], None, "--seeds: 0 0 names a seed twice"),
])
def test_a_run_folder_taken_or_a_seed_twice_stops_before_any_training(seeds: list[str], taken: str | None,
                                                                       expected: str, tmp_path: Path, capsys) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"{BEGIN}\n{END}\n")
    if taken:
        (tmp_path / taken).mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(["--run", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", *seeds])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {expected.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["doc.md", *([taken] if taken else [])])


@pytest.mark.parametrize(("doc", "expected"), [
    ("missing.md", "{tmp}/missing.md: cannot read it (No such file or directory)"),
    ("latin1.md", "{tmp}/latin1.md: not UTF-8 text (byte 0: invalid continuation byte)"),
    ("folder", "{tmp}/folder: cannot read it (Is a directory)"),
])
def test_a_doc_that_cannot_be_read_stops_before_any_training(doc: str, expected: str, tmp_path: Path,
                                                             capsys) -> None:
    (tmp_path / "latin1.md").write_bytes(b"\xe9t\xe9\n")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(["--run", str(tmp_path / "runs"), "--doc", str(tmp_path / doc)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {expected.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "runs").exists()


def test_the_table_is_printed_and_written_only_into_the_docs_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys) -> None:
    """Without --doc no file is written (README.md in the working folder kept); each --doc gets the table."""
    from toolkit.preference import measure

    monkeypatch.setattr(measure, "measure", lambda recipe, run, seed: _measured(seed or 0, 0.792))
    monkeypatch.chdir(tmp_path)
    for name in ("README.md", "doc.md"):
        (tmp_path / name).write_text(f"{BEGIN}\nold\n{END}\n")
    main(["--run", str(tmp_path / "runs")])
    text = section([_measured(0, 0.792)])
    assert capsys.readouterr().out == text + "\n"
    assert (tmp_path / "README.md").read_text() == f"{BEGIN}\nold\n{END}\n"
    main(["--run", str(tmp_path / "runs"), "--doc", "doc.md"])
    assert (tmp_path / "doc.md").read_text() == text + "\n"
    assert (tmp_path / "README.md").read_text() == f"{BEGIN}\nold\n{END}\n"


def test_help_names_the_module_and_gives_its_whole_description(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    usage, description = capsys.readouterr().out.split("\n\n")[:2]
    assert usage.startswith("usage: python -m toolkit.preference.measure [-h]")
    assert " ".join(description.split()) == (
        "`python -m toolkit.preference.measure`: train the small arena recipe, predict its held-out file in both "
        "orders, and print what was measured as a Markdown table, one column per seed; each `--doc` file also gets "
        "the table between its `measured` markers (the project's tables: `--doc docs/preference.md --doc "
        "README.md`).")
