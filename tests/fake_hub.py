"""A local stand-in of the Hugging Face Hub's HTTP API, enough for ``whoami``, ``create_repo`` and ``upload_folder``.

The server listens on 127.0.0.1 (a free port) in a thread and records every commit. It answers ``preupload``
with the ``regular`` upload mode for every file, so contents travel base64-encoded inside the NDJSON commit
(no LFS, no xet storage). Requests must carry ``Authorization: Bearer <token>``; anything else gets 401.

Use the ``fake_hub`` fixture of ``tests/conftest.py`` (:func:`serving`: it points huggingface_hub at the server
and sets ``HF_TOKEN`` to a fake secret), :func:`assert_no_secret` to prove a token never reached the disk, and
:func:`closed_port` for a Hub that cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.utils.sha import git_hash

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = {
    "create": re.compile(r"^/api/repos/create$"),
    "validate": re.compile(r"^/api/validate-yaml$"),
    "preupload": re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/?]+)"),
    "commit": re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/?]+)"),
    "info": re.compile(rf"^/api/models/{REPO}(/revision/(?P<rev>[^/?]+))?$"),
    "whoami": re.compile(r"^/api/whoami-v2$"),
}


@dataclass
class Commit:
    oid: str
    message: str
    changed: dict[str, bytes]
    """Files added or replaced by this commit (path -> content)."""


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)


class FakeHub:
    """The server and what it holds: ``repos`` by id, each with its files and commits."""

    def __init__(self, token: str):
        self.token = token
        self.token_role = "write"
        """What ``whoami`` says the token may do (``read``: a read-only token)."""
        self.repos: dict[str, Repo] = {}
        self.creations = 0
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def create(self, repo_id: str, private: bool) -> int:
        with self.lock:
            self.creations += 1
            if repo_id in self.repos:
                return 409
            self.repos[repo_id] = Repo(repo_id, private)
            return 200

    def commit(self, repo_id: str, lines: list[dict]) -> Commit:
        """Apply the NDJSON commit lines (header, file, deletedFile, deletedFolder) to the repo."""
        header = next(line["value"] for line in lines if line["key"] == "header")
        changed = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                   for line in lines if line["key"] == "file"}
        if any(line["key"] == "lfsFile" for line in lines):
            raise AssertionError("the fake hub asked for regular uploads only; got an LFS pointer")
        with self.lock:
            repo = self.repos[repo_id]
            for line in lines:
                if line["key"] == "deletedFile":
                    repo.files.pop(line["value"]["path"], None)
                elif line["key"] == "deletedFolder":
                    prefix = line["value"]["path"].rstrip("/") + "/"
                    repo.files = {p: c for p, c in repo.files.items() if not p.startswith(prefix)}
            repo.files.update(changed)
            oid = hashlib.sha1(f"{len(repo.commits)}:{header['summary']}".encode()).hexdigest()
            commit = Commit(oid, header["summary"], changed)
            repo.commits.append(commit)
            return commit


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def _reply(self, status: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._reply(401, {"error": "Invalid credentials in Authorization header"},
                            {"X-Error-Message": "Invalid credentials in Authorization header"})
                return
            for name, pattern in ROUTES.items():
                if match := pattern.match(path):
                    getattr(self, f"_{name}")(method, match, body)
                    return
            self._reply(404, {"error": f"fake hub: no route {method} {path}"})

        def _create(self, method: str, match: re.Match, body: bytes) -> None:
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            status = hub.create(repo_id, payload.get("visibility") == "private")
            self._reply(status, {"url": f"{hub.endpoint}/{repo_id}", "error": "repo exists" if status == 409 else None})

        def _validate(self, method: str, match: re.Match, body: bytes) -> None:
            self._reply(200, {"errors": [], "warnings": []})

        def _preupload(self, method: str, match: re.Match, body: bytes) -> None:
            repo = hub.repos.get(match["repo"])
            if repo is None:
                self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                      "oid": git_hash(repo.files[f["path"]]) if f["path"] in repo.files else None}
                     for f in json.loads(body)["files"]]
            self._reply(200, {"files": files, "commitOid": repo.commits[-1].oid if repo.commits else None})

        def _commit(self, method: str, match: re.Match, body: bytes) -> None:
            if match["repo"] not in hub.repos:
                self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            commit = hub.commit(match["repo"], [json.loads(line) for line in body.splitlines() if line.strip()])
            self._reply(200, {"commitUrl": f"{hub.endpoint}/{match['repo']}/commit/{commit.oid}",
                              "commitOid": commit.oid, "pullRequestUrl": None, "success": True})

        def _whoami(self, method: str, match: re.Match, body: bytes) -> None:
            self._reply(200, {"type": "user", "name": "me", "auth": {"accessToken": {"role": hub.token_role}}})

        def _info(self, method: str, match: re.Match, body: bytes) -> None:
            repo = hub.repos.get(match["repo"])
            if repo is None:
                self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            self._reply(200, {"id": repo.repo_id, "private": repo.private,
                              "sha": repo.commits[-1].oid if repo.commits else None,
                              "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    return Handler


@contextmanager
def serving(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A running :class:`FakeHub`; huggingface_hub points at it and ``HF_TOKEN`` holds its (fake) token."""
    token = "hf_" + secrets.token_hex(17)
    with FakeHub(token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
        monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
        monkeypatch.setenv("HF_TOKEN", token)
        yield hub


def closed_port() -> str:
    """The address of a local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def assert_no_secret(root: Path, secret: str) -> int:
    """Fail if any file under ``root`` (hidden ones too) contains ``secret``; return how many files were read."""
    needle = secret.encode()
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    leaks = [str(p) for p in files if needle in p.read_bytes()]
    assert not leaks, f"secret found in {leaks}"
    return len(files)
