"""The judges' backends: an OpenAI-compatible chat-completions endpoint over HTTP (standard library only), or a local
transformers model (:mod:`toolkit.evals.local_judge`, imported only for one). Each turns prompts into :class:`Reply`
objects: the text, or why there is none, with the attempts, tokens and seconds it cost. A failed call is a reply with
an ``error``, never an exception.

HTTP retries: timeouts, connection errors, 408, 429 and 5xx are retried up to ``max_attempts`` times, waiting
``backoff_s * 2**(attempt - 1)`` (or the server's ``Retry-After``), at most ``max_wait_s``. Other 4xx and a
response that is not a chat completion fail at once. The API key is read from the environment variable the suite
names and only ever goes into the ``Authorization`` header.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolkit.errors import UserError
from toolkit.evals.judge_protocol import Judge, Reply
from toolkit.evals.jury_spec import JudgeSpec
from toolkit.hub.reach import reachable

if TYPE_CHECKING:
    import torch

RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


def _api_key(spec: JudgeSpec) -> str:
    """The key of an HTTP judge (a UserError naming its variable when that is not set)."""
    key = os.environ.get(spec.api_key_env or "")
    if not key:
        raise UserError(f"judge {spec.name}: api_key_env: environment variable {spec.api_key_env} is not set")
    return key


class HttpJudge:
    """A judge behind ``POST {url}/chat/completions`` (vLLM, llama.cpp's server, hosted APIs)."""

    def __init__(self, spec: JudgeSpec, sleep: Callable[[float], None] = time.sleep):
        self.spec, self.sleep = spec, sleep
        self.headers = {"Content-Type": "application/json"}
        if spec.api_key_env:
            self.headers["Authorization"] = f"Bearer {_api_key(spec)}"

    def ask(self, prompts: list[str], verdicts: tuple[str, ...] = ()) -> list[Reply]:
        return [self._call(prompt) for prompt in prompts]

    def _call(self, prompt: str) -> Reply:
        spec, start = self.spec, time.monotonic()
        body = json.dumps({"model": spec.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": spec.max_tokens, "temperature": 0}).encode()
        error, attempt = "no attempt", 0
        for attempt in range(1, spec.max_attempts + 1):
            request = urllib.request.Request(spec.url.rstrip("/") + "/chat/completions", data=body,  # type: ignore[union-attr]
                                             headers=self.headers, method="POST")
            wait: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=spec.timeout_s) as response:
                    payload = response.read()
                return self._reply(payload, attempt, time.monotonic() - start)
            except urllib.error.HTTPError as exc:
                error, retried = f"HTTP {exc.code} {exc.reason}", exc.code in RETRIED_STATUS
                wait = _retry_after(exc.headers)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                error, retried = f"{type(exc).__name__}: {reason}", True
            if not retried or attempt == spec.max_attempts:
                break
            self.sleep(min(spec.max_wait_s, wait if wait is not None else spec.backoff_s * 2 ** (attempt - 1)))
        return Reply(None, error, attempt, 0, 0, time.monotonic() - start)

    def _reply(self, payload: bytes, attempt: int, seconds: float) -> Reply:
        try:
            data = json.loads(payload)
            text = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            return Reply(text, None, attempt, int(usage.get("prompt_tokens") or 0),
                         int(usage.get("completion_tokens") or 0), seconds)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Reply(None, f"malformed response: {type(exc).__name__}: {exc}"[:200], attempt, 0, 0, seconds)


def check_panel(task: Any) -> None:
    """Before any model is loaded or trained (the jury tasks' ``TaskType.check``): each of ``task.judges`` can
    answer. An HTTP judge's API key is set and something answers at its URL; a local judge's model is found (its
    folder, or its config in the hub or the cache) and its tokenizer loads with a pad or an eos token."""
    for spec in task.judges:
        if spec.url:
            if spec.api_key_env:
                _api_key(spec)
            if not reachable(spec.url, field=f"judge {spec.name}: url"):
                raise UserError(f"judge {spec.name}: url: nothing answers at {spec.url} (is its server up?)")
            continue
        from toolkit.evals.local_judge import check_local_judge  # transformers, only for a local judge

        check_local_judge(spec)


def make_judge(spec: JudgeSpec, device: torch.device) -> Judge:
    """The backend of ``spec``: HTTP when it has a ``url``, else a local model (loaded now, once)."""
    if spec.url:
        return HttpJudge(spec)
    from toolkit.evals.local_judge import LocalJudge  # transformers, only for a local judge

    return LocalJudge(spec, device)
