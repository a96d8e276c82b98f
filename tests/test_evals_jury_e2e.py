"""The shipped jury suite end to end through ``python -m toolkit eval``: a tiny model answers, a loopback
OpenAI-compatible server stands in for the HTTP judges (one answers as the humans did, one always says True),
a tiny local model is the transformers judge; numbers per judge, the report section, and the API key in no file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fake_judge import Answer, serving
from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.cli import main
from toolkit.report import report

EVALS = Path(__file__).resolve().parents[1] / "evals"
SECRET = "sk-jury-e2e-4f9c1d"
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _human_labels() -> dict[tuple[str, str], int]:
    items = [json.loads(line) for line in (EVALS / "jury-example.jsonl").read_text().splitlines()]
    return {(item["question"], given["answer"]): given["human"] for item in items for given in item["labelled"]}


def _script(labels: dict[tuple[str, str], int]):
    def answer(request: dict[str, Any], n: int) -> Answer:
        prompt = request["messages"][0]["content"]
        question, given = re.search(r"Question: (.*)\nReference answer: .*\nProvided answer: (.*)", prompt,
                                    re.DOTALL).groups()  # type: ignore[union-attr]
        if request["model"] == "gpt-4o-mini":
            return Answer("True", usage=(200, 1))
        return Answer("True" if labels.get((question, given)) == 1 else "False", usage=(150, 1))
    return answer


def test_shipped_jury_suite_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    model_dir = tmp_path / "model"
    tiny_model(max_positions=4096).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    (model_dir / "chat_template.jinja").write_text(CHAT)  # the suite asks in the chat template
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    labels = _human_labels()
    suite = yaml.safe_load((EVALS / "jury-example.yaml").read_text())
    task = suite["tasks"][0]
    task["data"] = str(EVALS / task["data"])
    assert task["length"] == 16384
    task["length"] = 3072  # the tiny model on 2 cores; its tokenizer needs ~2,200 tokens per document
    out = tmp_path / "run" / "eval" / "final"
    with serving(_script(labels)) as server:
        for judge in task["judges"]:
            if "url" in judge:
                judge["url"] = server.url
            else:
                judge["model"] = str(model_dir)  # the tiny model judges too (fast; its verdicts are noise)
        path = tmp_path / "jury-example.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        assert main(["eval", "--model", str(model_dir), "--suite", str(path), "--out", str(out),
                     "--device", "cpu"]) == 0
    entry = json.loads((out / "jury-example.json").read_text())["tasks"]["jury"]
    judges, panel = entry["judges"], entry["panel"]
    # 12 model answers + 18 human-labelled answers (9 judged correct, 9 incorrect), each judged by 3 judges
    assert (entry["items"], len(labels), sum(labels.values())) == (12, 18, 9)
    assert [judges[name]["calls"] for name in ("qwen", "llama", "gpt-4o-mini")] == [30, 30, 30]
    # "llama" answers as the humans did (Cohen 1.0) and says False to the tiny model's noise (score 0);
    # "gpt-4o-mini" always says True: score 1 and Cohen 0 (observed disagreement 9/18 = expected 1 * 9/18)
    assert (judges["llama"]["score"], judges["llama"]["human_kappa"], judges["llama"]["human_n"]) == (0.0, 1.0, 18)
    assert (judges["gpt-4o-mini"]["score"], judges["gpt-4o-mini"]["human_kappa"]) == (1.0, 0.0)
    # tokens as the server reported them; cost at $0.15 / $0.60 per 1M: (30 * 200 * 0.15 + 30 * 0.60) / 1e6
    assert (judges["gpt-4o-mini"]["prompt_tokens"], judges["gpt-4o-mini"]["completion_tokens"]) == (6000, 30)
    assert judges["gpt-4o-mini"]["cost_usd"] == pytest.approx(918e-6) and judges["llama"]["cost_usd"] == 0.0
    assert judges["qwen"]["backend"] == "local" and judges["qwen"]["calls"] == 30
    assert judges["qwen"]["n"] + judges["qwen"]["unparsed"] + judges["qwen"]["failed"] >= 12
    assert panel["calls"] == 90 and panel["n"] + panel["unjudged"] == 12
    raw = (out / entry["raw_outputs"]).read_text().splitlines()
    assert len(raw) == 90 and {json.loads(line)["judge"] for line in raw} == {"qwen", "llama", "gpt-4o-mini"}
    # the key went to the hosted judge only, as a bearer token
    auth = {r["json"]["model"]: r["headers"].get("Authorization") for r in server.requests}
    assert auth == {"gpt-4o-mini": f"Bearer {SECRET}", "Llama-3.1-8B-Instruct": None}
    printed = capsys.readouterr()
    assert f"jury-example/jury: score {entry['score']:.3f}, max_vote over 12 answers" in printed.out
    report.build_report(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Jury (PoLL)" in md and "| gpt-4o-mini (http: gpt-4o-mini) | 1.00 | 12 | 30 | 0 | 0 | 30 | " in md
    assert "| 0.00 n=18 | 6000/30 |" in md and "$0.0009 |" in md
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]
    assert SECRET not in printed.out + printed.err
