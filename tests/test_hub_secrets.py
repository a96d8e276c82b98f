"""Token safety: the token is used to push, and never lands in the run folder, the upload folder or our output."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

from tests.fake_hub import FakeHub, assert_no_secret
from tests.hub_runs import write_run
from toolkit.cli import main
from toolkit.errors import RunFailure, UserError
from toolkit.hub.secrets import get_token, hub_error, redact


def test_redact_env_login_and_token_shaped_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = tmp_path / "token"
    saved.write_text("short-saved-secret")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    assert get_token() == "short-saved-secret"
    assert redact("auth short-saved-secret and hf_" + "a1" * 12 + " end") == "auth *** and *** end"
    monkeypatch.setenv("HF_TOKEN", "env-secret-value")
    assert get_token() == "env-secret-value"
    assert redact("Bearer env-secret-value!") == "Bearer ***!"


def _http_error(status: int, message: str) -> HfHubHTTPError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/api/repos/create"))
    return HfHubHTTPError(message, response=response)


def test_hub_errors_become_one_line_without_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hf_" + "Z9" * 15
    monkeypatch.setenv("HF_TOKEN", secret)
    denied = hub_error(_http_error(403, "Forbidden"), "org/model")
    assert isinstance(denied, UserError) and "token lacks write access to org/model" in str(denied)
    failed = hub_error(_http_error(500, f"Server Error\n\nheaders: Authorization: Bearer {secret}"), "org/model")
    assert isinstance(failed, RunFailure)
    assert str(failed) == "push to org/model failed (HTTP 500): Server Error headers: Authorization: Bearer ***"
    offline = hub_error(ConnectionRefusedError(f"refused with {secret}"), "org/model")
    assert isinstance(offline, RunFailure) and secret not in str(offline) and "\n" not in str(offline)


def test_no_token_anywhere_after_dry_run_and_push(tmp_path: Path, fake_hub: FakeHub,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path, "lora")
    assert main(["push", str(run), "--repo-id", "me/tiny", "--dry-run"]) == 0
    assert main(["push", str(run), "--repo-id", "me/tiny", "--private"]) == 0
    assert len(fake_hub.repos["me/tiny"].commits) == 1  # the token was accepted by the hub
    captured = capsys.readouterr()
    assert "pushed" in captured.out
    assert fake_hub.token not in captured.out + captured.err
    assert assert_no_secret(run, fake_hub.token) > 20
    assert assert_no_secret(run / "upload", fake_hub.token) > 10
    assert not any(fake_hub.token.encode() in content for content in fake_hub.repos["me/tiny"].files.values())
