"""The judges' backends: a local transformers model, or an OpenAI-compatible chat-completions endpoint over HTTP
(standard library only). Each turns prompts into :class:`Reply` objects: the text, or why there is none, with the
attempts, tokens and seconds it cost. A failed call is a reply with an ``error``, never an exception. A local judge
with ``choose`` answers with the verdict whose first token its logits rank highest instead of generating.

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
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import AutoConfig

from toolkit.data.tokenizer import pretrained_tokenizer
from toolkit.data.tokens import pad_id
from toolkit.errors import UserError, reason
from toolkit.evals.jury_spec import JudgeSpec
from toolkit.evals.scoring import batched, generate_ids, model_device
from toolkit.hub.reach import reachable
from toolkit.model.loading import check_model_source

RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Reply:
    """One judge call: its text (``None`` when it failed), why it failed, and what it cost."""

    text: str | None
    error: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class Judge(Protocol):
    spec: JudgeSpec

    def ask(self, prompts: list[str], verdicts: tuple[str, ...] = ()) -> list[Reply]:
        """One reply per prompt; ``verdicts``: the replies the prompt asks for (a local judge with ``choose``
        answers one of them)."""
        ...


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


class LocalJudge:
    """A transformers model loaded once (a folder or hub id; a LoRA run's ``final/`` is merged), greedy verdicts
    in its chat template when it has one."""

    def __init__(self, spec: JudgeSpec, device: torch.device):
        from toolkit.model.loading import load_for_eval

        self.spec = spec
        try:
            self.model, self.tokenizer, _ = load_for_eval(spec.model, None, device, spec.precision)
        except (UserError, OSError, ValueError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"judge {spec.name}: model: cannot load {spec.model} ({reason})") from None
        self.pad_id = pad_id(self.tokenizer)

    def _encode(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                        add_generation_prompt=True)
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt + "\nVerdict:")["input_ids"]

    def ask(self, prompts: list[str], verdicts: tuple[str, ...] = ()) -> list[Reply]:
        if self.spec.choose and verdicts:
            return self._choose([self._encode(p) for p in prompts], verdicts)
        replies: list[Reply] = []
        for chunk in batched([self._encode(p) for p in prompts], self.spec.batch_size):
            start = time.monotonic()
            rows = generate_ids(self.model, chunk, self.spec.max_tokens, self.pad_id, self.tokenizer.eos_token_id)
            seconds = (time.monotonic() - start) / len(chunk)
            replies += [Reply(self.tokenizer.decode(row, skip_special_tokens=True), None, 1, len(ids), len(row),
                              seconds) for ids, row in zip(chunk, rows, strict=True)]
        return replies

    def _first_tokens(self, verdicts: tuple[str, ...]) -> list[int]:
        """Each verdict's first token as the judge would write it next: as it is in the chat template's answer
        turn; after a plain prompt's "Verdict:" with its space, unless the tokenizer makes the space a token of its
        own (then the verdicts' own first tokens)."""
        leads = ("",) if getattr(self.tokenizer, "chat_template", None) else (" ", "")
        for lead in leads:
            firsts = [self.tokenizer(lead + verdict, add_special_tokens=False)["input_ids"][0] for verdict in verdicts]
            if len(set(firsts)) == len(firsts):
                return firsts
        raise UserError(f"judge {self.spec.name}: choose: the verdicts {verdicts} share a first token")

    @torch.inference_mode()
    def _choose(self, encoded: list[list[int]], verdicts: tuple[str, ...]) -> list[Reply]:
        """The verdict whose first token has the highest logit after each prompt (rows right-padded without a
        mask: causal attention never sees the pads after a row; only the rows' last positions are computed)."""
        firsts = self._first_tokens(verdicts)
        device, replies = model_device(self.model), []
        for chunk in batched(encoded, self.spec.batch_size):
            start = time.monotonic()
            ids = torch.full((len(chunk), max(map(len, chunk))), self.pad_id, dtype=torch.long)
            for r, row in enumerate(chunk):
                ids[r, :len(row)] = torch.tensor(row)
            keep = sorted({len(row) - 1 for row in chunk})
            logits = self.model(input_ids=ids.to(device), logits_to_keep=torch.tensor(keep, device=device),
                                use_cache=False).logits
            at = torch.tensor([keep.index(len(row) - 1) for row in chunk], device=device)
            picks = logits[torch.arange(len(chunk), device=device), at][:, firsts].argmax(-1).tolist()
            seconds = (time.monotonic() - start) / len(chunk)
            replies += [Reply(verdicts[pick], None, 1, len(row), 1, seconds) for row, pick in zip(chunk, picks,
                                                                                                  strict=True)]
        return replies


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
        _check_local_judge(spec)


def _check_local_judge(spec: JudgeSpec) -> None:
    """A local judge's model is found, its config loads, and its tokenizer loads with a pad or an eos token."""
    field = f"judge {spec.name}: model"
    check_model_source(spec.model, field)
    try:
        AutoConfig.from_pretrained(spec.model)
    except (OSError, ValueError) as exc:
        raise UserError(f"{field}: cannot load {spec.model!r}: {reason(exc)}") from None
    pretrained_tokenizer(spec.model, field, lambda exc: UserError(
        f"{field}: cannot load the tokenizer of {spec.model!r}: {reason(exc)}"))


def make_judge(spec: JudgeSpec, device: torch.device) -> Judge:
    """The backend of ``spec``: HTTP when it has a ``url``, else a local model (loaded now, once)."""
    return HttpJudge(spec) if spec.url else LocalJudge(spec, device)
