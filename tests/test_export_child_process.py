"""llama.cpp calls run in a child process (toolkit/export/child_process.py): a child killed by a signal is one line
naming the runtime and the signal (exit 1 for ``export --check``, one failed test under pytest), and the caller
goes on."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.cli import main
from toolkit.errors import RunFailure, UserError
from toolkit.export.child_process import in_child

REPO = Path(__file__).resolve().parents[1]


def _segfault() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    os.kill(os.getpid(), signal.SIGSEGV)


def _refuse(field: str) -> None:
    raise UserError(f"{field}: refused")


def test_results_and_exceptions_come_back_from_the_child() -> None:
    assert in_child(divmod, 17, 5, doing="dividing") == (3, 2)
    assert in_child(os.getpid, doing="asking") != os.getpid()
    with pytest.raises(UserError, match="^n_ctx: refused$"):
        in_child(_refuse, "n_ctx", doing="refusing")


def test_a_segfault_in_the_child_is_one_run_failure_and_the_parent_goes_on() -> None:
    with pytest.raises(RunFailure) as caught:
        in_child(_segfault, doing="scoring needles")
    assert str(caught.value) == "llama.cpp (llama-cpp-python) crashed with SIGSEGV while scoring needles"
    assert in_child(divmod, 7, 2, doing="dividing") == (3, 1)


def test_export_check_exits_1_with_one_line_when_llama_cpp_crashes(tmp_path: Path, monkeypatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import toolkit.export.llama_cpp_needles as needles
    import toolkit.export.to_gguf as to_gguf

    monkeypatch.setattr(needles, "needle_tasks", lambda run: ("stage-0", {}))  # the preflight: a run to compare with
    monkeypatch.setattr(to_gguf, "export_gguf", lambda run, out, outtype: tmp_path / "run-f16.gguf")
    monkeypatch.setattr(needles, "score_needles_in_llama_cpp",
                        lambda run, gguf, outtype, found: in_child(_segfault, doing=f"scoring needles on {gguf.name}"))
    assert main(["export", str(tmp_path), "--format", "gguf", "--check"]) == 1
    err = capsys.readouterr().err
    assert err == "failed: llama.cpp (llama-cpp-python) crashed with SIGSEGV while scoring needles on run-f16.gguf\n"


def test_under_pytest_a_crash_in_the_child_is_one_failed_test(tmp_path: Path) -> None:
    (tmp_path / "test_crash.py").write_text(
        "import os, resource, signal\n"
        "from toolkit.export.child_process import in_child\n\n"
        "def _segfault():\n"
        "    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n\n"
        "def test_crashes():\n"
        "    in_child(_segfault, doing='evaluating')\n\n"
        "def test_runs_after():\n"
        "    assert in_child(abs, -3, doing='evaluating') == 3\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_crash.py"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    assert "RunFailure: llama.cpp (llama-cpp-python) crashed with SIGSEGV while evaluating" in done.stdout
