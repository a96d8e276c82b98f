"""``eval.verdict.extended_before_max``: the extended length must be out of reach before extension."""

from __future__ import annotations

from pathlib import Path

from tests.test_verdict import _write, fake_run, niah_entry
from toolkit.evals.stats import Rate
from toolkit.report.seed_table import summary_markdown
from toolkit.report.verdict import check_run, compute_verdict, verdict_spec
from toolkit.run_folder import load_run


def test_accuracy_before_extension_at_the_extended_length_is_checked(tmp_path: Path) -> None:
    verdict = check_run(fake_run(tmp_path, "good", verdict={"task": "niah-tiny/passkey", "extended_before_max": 0.3}))
    assert verdict.passed
    assert verdict.before[1024] == Rate.of(0, 100)
    assert "accuracy at 1024 before extension: 0.00 [0.00, 0.04] n=100 (<= 0.30 ok)" in verdict.text()
    run = load_run(tmp_path / "good")
    spec = verdict_spec(run)
    assert spec is not None
    low = compute_verdict(run, spec.model_copy(update={"extended_before_max": None}))
    assert len(low.checks) == len(verdict.checks) - 1  # unset: not checked
    assert ("extended accuracy >= 0.9, extended accuracy before extension <= 0.3, retention >= 0.95."
            in summary_markdown([tmp_path / "good"]))


def test_a_base_that_already_reaches_the_extended_length_fails(tmp_path: Path) -> None:
    folder = fake_run(tmp_path, "easy", verdict={"task": "niah-tiny/passkey", "extended_before_max": 0.3})
    before = {128: 0.99, 256: 0.98, 512: 0.9, 1024: 0.5}
    _write(folder, "stage-0-passkey-256", "niah-tiny", {"passkey": niah_entry(before)})
    verdict = check_run(folder)
    assert [check.name for check in verdict.failed] == ["accuracy at 1024 before extension"]
    assert "(<= 0.30 FAIL)" in verdict.text()
