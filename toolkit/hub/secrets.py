"""The Hub token: where it comes from, and how it is kept out of every message we print.

The token is read from ``HF_TOKEN`` or the user's ``hf auth login`` (``huggingface_hub.get_token``). It is
handed to ``HfApi`` and nowhere else: never logged, never written into the run folder. Errors raised by
``huggingface_hub`` are turned into one-line :class:`UserError` / :class:`RunFailure` messages passed through
:func:`redact` first.
"""

from __future__ import annotations

import os
import re

import httpx
from huggingface_hub import get_token as _hub_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from toolkit.errors import RunFailure, UserError

TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
LOGIN_HINT = "set HF_TOKEN or run `hf auth login`"


def get_token() -> str | None:
    """The token to push with: ``HF_TOKEN``, else the saved login; ``None`` when neither exists."""
    return _hub_token()


def redact(text: str) -> str:
    """``text`` with every token value replaced by ``***``: the env and login tokens and anything ``hf_...``-shaped."""
    known = {os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}
    try:
        known.add(_hub_token())
    except Exception:  # a broken login must not stop us from printing an error
        pass
    for secret in sorted((s for s in known if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return TOKEN_PATTERN.sub("***", text)


HubFailure = (HfHubHTTPError, httpx.HTTPError, OSError)
"""What ``huggingface_hub`` raises when a request fails (HTTP status, connection, offline mode)."""


def hub_error(exc: HfHubHTTPError | httpx.HTTPError | OSError, repo_id: str) -> UserError | RunFailure:
    """One-line, token-free error for a failure of ``huggingface_hub`` while pushing to ``repo_id``."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        return UserError(f"not logged in or token lacks write access to {repo_id}: {LOGIN_HINT}")
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set; unset it to push")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        detail = exc.server_message or str(exc)
        return RunFailure(_one_line(f"push to {repo_id} failed (HTTP {status}): {detail}"))
    return RunFailure(_one_line(f"push to {repo_id} failed: {type(exc).__name__}: {exc}"))


def _one_line(text: str) -> str:
    return " ".join(redact(text).split())
