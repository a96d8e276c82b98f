"""A machine without internet: a command that reads by hub id asks the Hub once, and when no connection opens reads
the local cache only, at once, instead of huggingface_hub's six tries per file (about 23 s and a warning each)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub, closed_port
from tests.real_model import REPO, SMALL_MODEL, needs_small_model
from toolkit.errors import UserError
from toolkit.hub import reach

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
SUITE = """name: offline-check
description: One chat passkey prompt at 128 tokens.
tasks:
  - {type: niah, name: passkey, chat: true, lengths: [128], depths: [0.5], samples: 1}
"""


@pytest.fixture
def online_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in reach.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_any_answer_is_reachable_and_a_refused_connection_is_not(fake_hub: FakeHub) -> None:
    assert reach.reachable(fake_hub.endpoint)  # it answers HEAD / with an error status: the Hub is there
    assert not reach.reachable(closed_port())


def test_an_unreachable_hub_puts_a_reading_command_offline(monkeypatch: pytest.MonkeyPatch, online_unset) -> None:
    address = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", address)
    assert reach.cache_only_unless_reachable("push") is None  # push needs the Hub itself
    assert "HF_HUB_OFFLINE" not in os.environ
    line = reach.cache_only_unless_reachable("eval")
    assert line == (f"hub: {address} cannot be reached, so models and data sets named by hub id are read from the "
                    "local cache only (HF_HUB_OFFLINE=1)")
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    def no_request(url: str, timeout: float = 0) -> bool:
        raise AssertionError(f"asked {url} although the user set offline mode")

    monkeypatch.setattr(reach, "reachable", no_request)
    assert reach.cache_only_unless_reachable("train") is None  # already offline: nothing asked, nothing said
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert reach.cache_only_unless_reachable("train") is None


def test_an_endpoint_that_is_no_address_is_one_line_naming_it(tmp_path: Path, online_unset) -> None:
    for address in ("http://[::1", "ftp://example.org"):
        with pytest.raises(UserError, match=rf"^HF_ENDPOINT: '{re.escape(address)}' is no http\(s\) address"):
            reach.reachable(address)
    done = _eval("nobody/none", tmp_path, tmp_path / "eval", tmp_path / "suite.yaml", endpoint="http://[::1")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()  # before any model or suite is read
    assert line.startswith("error: HF_ENDPOINT: 'http://[::1' is no http(s) address (")


def test_a_reachable_hub_changes_nothing(fake_hub: FakeHub, online_unset) -> None:
    assert reach.cache_only_unless_reachable("train") is None
    assert "HF_HUB_OFFLINE" not in os.environ


def _eval(model: str, home: Path, out: Path, suite: Path, endpoint: str = "") -> subprocess.CompletedProcess:
    """``python -m toolkit eval`` with the Hub at ``endpoint`` (default: a closed port) and its cache in ``home``."""
    env = {key: value for key, value in os.environ.items() if key not in reach.OFFLINE_VARIABLES}
    env |= {"HF_HOME": str(home), "HF_ENDPOINT": endpoint or closed_port()}
    return subprocess.run([sys.executable, "-m", "toolkit", "eval", "--model", model, "--suite", str(suite),
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@needs_small_model
def test_the_cli_loads_a_cached_hub_model_offline_without_retries(tmp_path: Path) -> None:
    home = tmp_path / "hf"
    repo = home / "hub" / "models--someone--smol"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    (repo / "snapshots" / SNAPSHOT).mkdir(parents=True)
    for file in SMALL_MODEL.iterdir():
        (repo / "snapshots" / SNAPSHOT / file.name).symlink_to(file)
    suite = tmp_path / "offline-check.yaml"
    suite.write_text(SUITE)

    done = _eval("someone/smol", home, tmp_path / "eval", suite)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Retrying" not in done.stderr and "cannot be reached, so models and data sets" in done.stderr
    result = json.loads((tmp_path / "eval" / "offline-check.json").read_text())["tasks"]["passkey"]
    assert result["n"] == 1

    missing = _eval("nobody/none", home, tmp_path / "eval-missing", suite)
    assert missing.returncode == 2 and "Retrying" not in missing.stderr
    assert missing.stderr.splitlines()[-1].startswith("error: --model: cannot load 'nobody/none': ")
