"""RULER-style tasks: generators follow the definitions, scoring and effective length are RULER's."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.data.needle import SentenceTokens
from toolkit.evals.api import run_suites
from toolkit.evals.ruler import RULER_TASKS, ruler_headline
from toolkit.evals.ruler_data import ruler_sample, string_match_all
from toolkit.evals.stats import effective_length


@pytest.mark.parametrize("scores, expected", [
    ({256: 1.0, 512: 0.9, 1024: 0.5, 2048: 0.95}, 512),  # 2048 passes but 1024 does not: stop at 512
    ({"2048": 0.9, "256": 0.99, "1024": 0.97, "512": 0.9}, 2048),  # string keys, any order
    ({256: 0.856, 512: 0.85}, 256),  # at the threshold passes, as in the verdict's table
    ({256: 0.2}, None),
])
def test_effective_length(scores, expected):
    assert effective_length(scores, 0.856) == expected


def test_effective_length_threshold_is_configurable():
    scores = {1024: 0.95, 2048: 0.7, 4096: 0.55}
    assert [effective_length(scores, t) for t in (0.9, 0.6, 0.5)] == [1024, 2048, 4096]


def test_string_match_all():
    assert string_match_all("The words are ALPHA, beta and gamma.", ["alpha", "beta", "delta", "omega"]) == 0.5
    assert string_match_all(" 12345.", ["12345"]) == 1.0


@pytest.mark.parametrize("task", RULER_TASKS)
def test_samples_fit_and_hold_their_answers(task: str):
    tok = tiny_tokenizer()
    tokens = SentenceTokens(tok)
    for length in (512, 1024):
        sample = ruler_sample(task, tokens, length, random.Random(f"{task}{length}"), None)
        assert len(sample.input_ids) + sample.max_new_tokens <= length
        assert len(sample.input_ids) > 0.8 * length  # the haystack / word list fills the length
        assert sample.input_ids[0] == tok.bos_token_id
        text = tok.decode(sample.input_ids, skip_special_tokens=True)
        expected_count = {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4, "niah_multiquery": 4,
                          "vt": 5, "cwe": 10, "fwe": 3}[task]
        assert len(set(sample.answers)) == expected_count
        if task == "cwe":  # the answers are the ten most frequent listed words
            counts = Counter(re.findall(r"\d+\. (\w+)", text))
            assert {w for w, _ in counts.most_common(10)} == set(sample.answers)
            others = [c for w, c in counts.items() if w not in sample.answers]
            assert min(counts[w] for w in sample.answers) > max(others, default=0)
        elif task == "fwe":  # the three most frequent coded words after the '....' noise
            body = text.split("coded words. ")[1].split("\nQuestion")[0].split()
            ranked = [w for w, _ in Counter(body).most_common(4)]
            assert ranked[0] == "...." and ranked[1:] == sample.answers
        elif task == "vt":  # a chain from the value through every variable, in order
            found = re.search(r"assigned the value (\d+)", text)
            assert found is not None
            value = found.group(1)
            assert f"VAR {sample.answers[0]} = {value}." in text
            positions = [text.index(f"VAR {b} = VAR {a}.") for a, b in itertools.pairwise(sample.answers)]
            assert positions == sorted(positions)
        else:
            for value in sample.answers:
                assert re.search(rf"The pass key for \w+ is {value}\.", text)


def test_too_short_length_is_a_user_error():
    from toolkit.errors import UserError

    with pytest.raises(UserError, match="^ruler task vt: length 64 is too short for its needles, question and answer"):
        ruler_sample("vt", SentenceTokens(tiny_tokenizer()), 64, random.Random(0), None)


class NeedleReader(torch.nn.Module):
    """Generates the right answer of a single-needle prompt by reading it (a perfect niah_single model)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **_) -> torch.Tensor:
        tok = tiny_tokenizer()
        rows = []
        for row in input_ids.tolist():
            text = tok.decode(row, skip_special_tokens=True)
            key = re.findall(r"pass key for (\w+)\?", text)[-1]
            found = re.search(rf"pass key for {key} is (\d+)\.", text)
            assert found is not None
            value = found.group(1)
            new = tok(f" {value}.", add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(row + new + [tok.pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def _suite(tmp_path: Path, tasks: list[str], lengths: list[int], samples: int = 2) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ntasks:\n  - type: ruler\n    tasks: {tasks}\n    lengths: {lengths}\n"
                    f"    samples: {samples}\n    batch_tokens: 1024\n")
    return str(path)


def test_ruler_run_perfect_reader(tmp_path: Path):
    out = run_suites(NeedleReader(), tiny_tokenizer(), [_suite(tmp_path, ["niah_single"], [256, 512])], tmp_path,
                     "base", "reader")
    entry = out["r"]["tasks"]["ruler"]
    assert entry["scores_by_length"] == {"256": 1.0, "512": 1.0}
    assert entry["effective_length"] == 512 and entry["score"] == 1.0
    assert (tmp_path / "base" / "r-ruler.png").is_file()


def test_ruler_run_tiny_model(tmp_path: Path):
    out = run_suites(tiny_model(), tiny_tokenizer(), [_suite(tmp_path, ["niah_single", "fwe"], [512], samples=1)],
                     tmp_path, "base", "tiny")
    entry = json.loads((tmp_path / "base" / "r.json").read_text())["tasks"]["ruler"]
    assert entry == out["r"]["tasks"]["ruler"]
    assert len(entry["cells"]) == 2
    for cell in entry["cells"]:
        assert cell["score"] == string_match_all(cell["output"], cell["answers"])
    for name in ("niah_single", "fwe"):
        [cell] = [c for c in entry["cells"] if c["task"] == name]
        assert entry["subtasks"][name]["scores_by_length"]["512"] == cell["score"]
    assert entry["scores_by_length"]["512"] == pytest.approx(
        (entry["subtasks"]["niah_single"]["score"] + entry["subtasks"]["fwe"]["score"]) / 2)
    assert entry["effective_length"] == effective_length(entry["scores_by_length"], 0.856)


def test_the_headline_says_none_where_no_length_reaches_the_threshold() -> None:
    assert ruler_headline({"effective_length": None}) == "effective length none"  # as the verdict says it
    assert ruler_headline({"effective_length": 4096}) == "effective length 4096"
