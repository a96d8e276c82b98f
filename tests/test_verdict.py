"""The verdict (eval.verdict) on synthetic run folders: pass, fail, `report --check` exit codes, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.evals.niah import heatmap_panels
from toolkit.evals.stats import COMPARISON_INTERVAL, Comparison, Rate, ratio_interval
from toolkit.recipe.schema import EvalSpec
from toolkit.report.report import build_report
from toolkit.report.verdict import check_run, compute_verdict, verdict_spec, verdict_text
from toolkit.run_folder import load_run

PNG = b"\x89PNG\r\n\x1a\n"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
N = 100  # prompts per length: 5 depths x 20 samples


def niah_entry(accuracy: dict[int, float]) -> dict:
    """A niah result as ``grid_summary`` writes it, every depth at the length's accuracy."""
    correct = {str(n): round(a * N) for n, a in accuracy.items()}
    by_length = {n: k / N for n, k in correct.items()}
    score = sum(by_length.values()) / len(by_length)
    return {"type": "niah", "score": score, "mean": score, "scores_by_length": by_length,
            "grid": {n: {str(d): value for d in DEPTHS} for n, value in by_length.items()},
            "n_by_length": {n: N for n in correct}, "correct_by_length": correct, "n": N * len(correct),
            "correct": sum(correct.values()), "complete": True}


def _write(run: Path, tag: str, suite: str, tasks: dict) -> None:
    (run / "eval" / tag).mkdir(parents=True, exist_ok=True)
    (run / "eval" / tag / f"{suite}.json").write_text(json.dumps({"suite": suite, "tag": tag, "tasks": tasks}))


def fake_run(root: Path, name: str, *, seed: int = 0, extended: float = 0.95, short_final: float = 0.95,
             verdict: dict | None = None, final: bool = True) -> Path:
    """base (untrained: zeros), stage-0 trained at 256, stage-1 extended to 1024 (scores as given)."""
    run = root / name
    run.mkdir(parents=True)
    recipe = {"name": "tiny-passkey", "seed": seed, "model": {"init_config": {}, "train_tokenizer": {}},
              "train": {"stages": [{"name": "passkey-256", "seq_len": 256, "max_steps": 1},
                                   {"name": "yarn-1024", "seq_len": 1024, "max_steps": 1}]},
        "eval": {"suites": ["../evals/niah-tiny.yaml", "../evals/short-context.yaml"], "verdict": verdict}}
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    (run / "run_info.json").write_text(json.dumps({
        "recipe": "tiny-passkey", "device": "CPU (x86_64, 2 threads)", "native_length": 256,
        "stages": [{"name": "passkey-256", "seq_len": 256}, {"name": "yarn-1024", "seq_len": 1024}]}))
    lengths = (128, 256, 512, 1024, 2048)
    points = {"base": ({n: 0.0 for n in lengths}, 0.0),
              "stage-0-passkey-256": ({128: 0.99, 256: 0.98, 512: 0.1, 1024: 0.0, 2048: 0.0}, 0.95)}
    if final:
        points["stage-1-yarn-1024"] = ({128: 0.99, 256: 0.97, 512: 0.96, 1024: extended, 2048: 0.2}, short_final)
    for tag, (passkey, short) in points.items():
        _write(run, tag, "niah-tiny", {"passkey": niah_entry(passkey), "multikey": niah_entry({128: 0.3, 256: 0.2})})
        _write(run, tag, "short-context", {
            "passkey_short": {"type": "lm_eval", "score": 0.9 if tag != "base" else 0.0, "n": {"longctx": 40},
                              "metrics": {"longctx": {"acc,none": 0.9 if tag != "base" else 0.0}}},
            "niah_short": niah_entry({128: short, 256: short})})
    return run


SPEC = {"task": "niah-tiny/passkey"}


def test_schema_takes_a_verdict() -> None:
    spec = EvalSpec(suites=[], verdict=SPEC).verdict
    assert spec is not None and (spec.native_min, spec.extended_min, spec.retention_min) == (0.95, 0.90, 0.95)
    assert spec.retention_suites == ["short-context"] and spec.effective_threshold == 0.856
    with pytest.raises(ValueError):
        EvalSpec(verdict={"task": "passkey"})  # not <suite>/<task>
    with pytest.raises(ValueError):
        EvalSpec(verdict={"task": "a/b", "native_min": 1.5})


def test_passing_run(tmp_path: Path) -> None:
    verdict = check_run(fake_run(tmp_path, "good", verdict=SPEC))
    assert verdict.passed and not verdict.failed
    assert (verdict.reference, verdict.final) == ("stage-0-passkey-256", "stage-1-yarn-1024")
    assert (verdict.native_length, verdict.extended_length) == (256, 1024)
    assert verdict.native_before == Rate.of(98, 100) and verdict.extended_after == Rate.of(95, 100)
    assert verdict.native_after == Rate.of(97, 100)
    assert (verdict.effective_before, verdict.effective_after) == (256, 1024)
    assert {key: ratio.value for key, ratio in verdict.retention.items() if ratio} == {
        "short-context/passkey_short": 1.0, "short-context/niah_short": 1.0}
    assert (verdict.retention["short-context/passkey_short"] or Comparison(0)).interval == ratio_interval(
        Rate.of(36, 40), Rate.of(36, 40))  # 0.9 of 40 documents at both
    text = verdict.text()
    assert text.splitlines()[0] == ("Verdict (niah-tiny/passkey): PASS. Trained at 256 tokens, extended 4x to 1024.")
    assert "accuracy at 256 before extension: 0.98 [0.93, 0.99] n=100 (>= 0.95 ok)" in text
    assert "accuracy at 1024 after extension: 0.95 [0.89, 0.98] n=100 (>= 0.90 ok)" in text
    assert "effective length (>= 0.856): 256 before, 1024 after" in text
    assert ("short-context retention (final / before): passkey_short 1.00 [0.84, 1.18], niah_short 1.00 [0.95, 1.05] "
            "(>= 0.95 ok)") in text


def test_failing_run(tmp_path: Path) -> None:
    verdict = check_run(fake_run(tmp_path, "bad", extended=0.80, short_final=0.85, verdict=SPEC))
    assert not verdict.passed
    assert [check.name for check in verdict.failed] == ["accuracy at 1024 after extension", "retention"]
    assert verdict.effective_after == 512
    text = verdict.text()
    assert text.startswith("Verdict (niah-tiny/passkey): FAIL.")
    assert "0.80 [0.71, 0.87] n=100 (>= 0.90 FAIL)" in text and "niah_short 0.89 [0.83, 0.95] (>= 0.95 FAIL)" in text
    spec = verdict_spec(load_run(tmp_path / "bad"))
    assert spec is not None
    stricter = compute_verdict(load_run(tmp_path / "bad"), spec.model_copy(update={"extended_min": 0.5,
                                                                                   "retention_min": 0.5}))
    assert stricter.passed


def test_report_check_exit_codes(tmp_path: Path, capsys) -> None:
    good = fake_run(tmp_path, "good", verdict=SPEC)
    assert main(["report", str(good), "--check"]) == 0
    assert "Verdict (niah-tiny/passkey): PASS." in capsys.readouterr().out
    md = (good / "report.md").read_text()
    assert md.startswith("# Run report: tiny-passkey\n\n```text\nVerdict (niah-tiny/passkey): PASS.")
    assert '<pre class="pass">Verdict (niah-tiny/passkey): PASS.' in (good / "report.html").read_text()

    bad = fake_run(tmp_path, "bad", extended=0.80, verdict=SPEC)
    assert main(["report", str(bad), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL" in out and err.startswith("failed: verdict failed: accuracy at 1024 after extension (0.80 vs 0.90)")
    assert main(["report", str(bad)]) == 0  # without --check the report is only rebuilt
    assert capsys.readouterr().out == f"wrote {bad / 'report.md'} and report.html beside it\n"

    no_spec = fake_run(tmp_path, "no-spec")
    assert main(["report", str(no_spec), "--check"]) == 2
    assert capsys.readouterr().err == (f"error: {no_spec}: the recipe has no eval.verdict (e.g. verdict: "
                                       "{task: niah-tiny/passkey})\n")
    assert not (no_spec / "report.md").exists() and not (no_spec / "report.html").exists()  # checked first
    (no_spec / "recipe.resolved.yaml").unlink()
    assert main(["report", str(no_spec), "--check"]) == 2
    assert capsys.readouterr().err == (f"error: {no_spec}: no recipe.resolved.yaml, so no verdict to check (is it a "
                                       "run folder of `python -m toolkit train`?)\n")

    unfinished = fake_run(tmp_path, "unfinished", verdict=SPEC, final=False)
    assert main(["report", str(unfinished), "--check"]) == 2
    assert "no evaluation of the model before extension and after it" in capsys.readouterr().err
    assert not (unfinished / "report.md").exists()
    assert main(["report", str(unfinished)]) == 0  # without --check the report says why there is no verdict
    assert "Verdict not computed:" in (unfinished / "report.md").read_text()
    assert verdict_text(load_run(unfinished)).startswith("Verdict not computed:")

    other = fake_run(tmp_path, "other-task", verdict={"task": "niah-tiny/nope"})
    assert main(["report", str(other), "--check"]) == 2
    assert "no niah-tiny/nope results" in capsys.readouterr().err


def test_no_verdict_on_a_stopped_run_or_an_interrupted_evaluation(tmp_path: Path) -> None:
    stopped = fake_run(tmp_path, "stopped", verdict=SPEC)  # a third stage planned, never evaluated
    info = json.loads((stopped / "run_info.json").read_text())
    info["stages"].append({"name": "yarn-4096", "seq_len": 4096})
    (stopped / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"the last stage \(2\) has no evaluation \(the last evaluated is "
                                        r"stage-1-yarn-1024\)"):
        check_run(stopped)

    interrupted = fake_run(tmp_path, "interrupted", verdict=SPEC)
    results = interrupted / "eval" / "stage-1-yarn-1024" / "niah-tiny.json"
    data = json.loads(results.read_text())
    data["tasks"]["passkey"]["complete"] = False
    results.write_text(json.dumps(data))
    with pytest.raises(UserError, match="niah-tiny/passkey at stage-1-yarn-1024 is unfinished"):
        check_run(interrupted)
    assert check_run(fake_run(tmp_path, "finished", verdict=SPEC)).passed


def test_invalid_spec_in_the_run_is_a_user_error(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "odd", verdict={"task": "niah-tiny/passkey", "native_min": 2})
    with pytest.raises(UserError, match=r"eval\.verdict\.native_min"):
        check_run(run)


def test_summary_across_runs(tmp_path: Path, capsys) -> None:
    runs = [fake_run(tmp_path, "seed-0", seed=0, verdict=SPEC),
            fake_run(tmp_path, "seed-1", seed=1, extended=0.80, verdict=SPEC)]
    assert main(["report", "--summary", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = ("| run | seed | model | 128 | 256 (native) | 512 | 1024 (4x) | 2048 | effective length | retention "
              "| verdict |")
    assert header in lines
    table = [line for line in lines if line.startswith("| seed-")]
    assert len(table) == 4
    assert table[0].startswith("| seed-0 | 0 | before extension (stage-0-passkey-256) | 0.99 [0.95, 1.00] | "
                               "0.98 [0.93, 0.99] |")
    assert table[1].endswith("| 1024 | passkey_short 1.00 [0.84, 1.18], niah_short 1.00 [0.95, 1.05] | PASS |")
    assert table[3].startswith("| seed-1 | 1 | after extension (stage-1-yarn-1024) |")
    assert "| 0.80 [0.71, 0.87] |" in table[3] and table[3].endswith("| FAIL |")
    assert "n=100 prompts per length" in out and f" {COMPARISON_INTERVAL} " in out
    assert "Machine: CPU (x86_64, 2 threads). Toolkit commit: not recorded. Runs dated 20" in out
    assert f"`python -m toolkit report --summary {runs[0]} {runs[1]}`" in out
    assert main(["report", *map(str, runs)]) == 2  # several runs need --summary
    assert main(["report", "--summary", "--check", str(runs[0])]) == 2


def test_summary_names_a_stopped_run_and_how_to_continue_it(tmp_path: Path, capsys) -> None:
    done = fake_run(tmp_path, "seed-0", verdict=SPEC)
    stopped = fake_run(tmp_path, "sig2", verdict=SPEC, final=False)
    for name in ("stage-0-step-4", "stage-1-step-2", "stage-1-step-3"):
        (stopped / "checkpoints" / name).mkdir(parents=True)
        (stopped / "checkpoints" / name / "trainer_state.json").write_text("{}")
    (stopped / "checkpoints" / "stage-1-step-3" / "trainer_state.json").unlink()  # incomplete: not the latest
    assert main(["report", "--summary", str(done), str(stopped)]) == 2
    assert capsys.readouterr().err == (
        f"error: {stopped}: the run is unfinished (its latest checkpoint stage-1-step-2, no final/): train its recipe "
        "again with train.resume=true to continue it (no evaluation of the model before extension and after it "
        "(tags: base, stage-0-passkey-256))\n")
    (stopped / "final").mkdir()  # checkpoints kept beside a final model: finished, no advice to resume
    assert main(["report", "--summary", str(done), str(stopped)]) == 2
    assert capsys.readouterr().err == (f"error: {stopped}: no evaluation of the model before extension and after it "
                                       "(tags: base, stage-0-passkey-256)\n")


def test_summary_shows_a_run_given_twice_once(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run(tmp_path, "t1", verdict=SPEC)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--summary", "t1", str(run), "./t1/"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(" | ")[2] for line in out.splitlines() if line.startswith("| t1 |")] == [
        "before extension (stage-0-passkey-256)", "after extension (stage-1-yarn-1024)"]
    assert "`python -m toolkit report --summary t1`" in out
    assert err == f"note: t1 named 3 times (t1, {run}, t1); its rows are shown once\n"


def test_heatmaps_side_by_side_without_the_untrained_base(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "good", verdict=SPEC)
    build_report(run)
    loaded = load_run(run)
    found = [(tag, loaded.evals[tag]["niah-tiny"]["tasks"]["passkey"]) for tag in loaded.tags]
    assert [tag for tag, _ in heatmap_panels(loaded, found)] == ["stage-0-passkey-256", "stage-1-yarn-1024"]
    assert (run / "niah-niah-tiny-passkey.png").read_bytes().startswith(PNG)
    md = (run / "report.md").read_text()
    assert "](niah-niah-tiny-passkey.png)" in md and "niah-niah-tiny-passkey-base.png" not in md
    assert "| stage-1-yarn-1024 | 0.99 [0.95, 1.00] | 0.97 [0.92, 0.99] | 0.96 [0.90, 0.98] |" in md
    assert "niah-tiny/passkey: accuracy by length with 95% Wilson intervals, n=100 prompts per length." in md
