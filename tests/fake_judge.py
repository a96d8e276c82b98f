"""A scripted OpenAI-compatible server on the loopback interface for the jury tests (imported, no tests here).

``POST /v1/chat/completions`` is answered by a script ``(request JSON, call number) -> Answer``: a chat completion
with the script's text and token usage, or an error status, a delay, a body that is not a completion. Every
request is recorded with its headers. :func:`arena_script` answers the pairwise jury's prompts by a rule per model.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    text: str = "True"
    status: int = 200
    delay: float = 0.0
    body: bytes | None = None
    """Sent instead of a chat completion (a malformed answer)."""
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] = (100, 2)
    """(prompt_tokens, completion_tokens) reported."""


Script = Callable[[dict[str, Any], int], Answer]


@dataclass
class FakeJudge:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    """``{"path", "headers", "json"}`` of every request, in arrival order."""


def completion(answer: Answer) -> bytes:
    prompt_tokens, completion_tokens = answer.usage
    return json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}}).encode()


_PAIR = re.compile(r"\[Assistant A\]\n(.*?)\n\n\[Assistant B\]\n(.*?)(?=\n\n=== Turn |\Z)", re.DOTALL)
Shown = tuple[tuple[str, ...], tuple[str, ...]]
"""The answers of assistant A and of assistant B, every turn, as a pairwise prompt shows them."""


def shown_pair(request: dict[str, Any]) -> Shown:
    turns = _PAIR.findall(request["messages"][0]["content"])
    return tuple(a for a, _ in turns), tuple(b for _, b in turns)


def arena_script(winners: dict[Shown, int], usage: tuple[int, int] = (300, 1)) -> Script:
    """Pairwise verdicts by the requested model: ``oracle`` answers as the humans did, in the order shown
    (``winners``: 0 A, 1 B, 2 tie); ``first`` always says A (pure position bias); ``mumbles`` says nothing
    parseable; ``down`` fails with HTTP 500."""
    def answer(request: dict[str, Any], number: int) -> Answer:
        model = request["model"]
        if model == "down":
            return Answer(status=500)
        if model == "mumbles":
            return Answer("Both answers have merit.", usage=usage)
        text = "A" if model == "first" else ("A", "B", "tie")[winners[shown_pair(request)]]
        return Answer(text, usage=usage)
    return answer


@contextmanager
def serving(script: Script) -> Iterator[FakeJudge]:
    """Run the server in a thread for the ``with`` block; its ``url`` ends in ``/v1``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  (http.server's name)
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "json": request})
                number = len(fake.requests) - 1
            answer = script(request, number) if self.path == "/v1/chat/completions" else Answer(status=404)
            time.sleep(answer.delay)
            body = answer.body if answer.body is not None else completion(answer) if answer.status == 200 else b"{}"
            try:
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeJudge(f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
