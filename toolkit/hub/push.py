"""``python -m toolkit push RUN --repo-id ORG/NAME``: build the upload folder of a run and publish it.

The folder (``RUN/upload/``, rebuilt from scratch each time) holds the model card, the weights chosen by
``what`` (safetensors only), tokenizer and config, the report with its plots, and the eval JSON. It is sent
with ``HfApi.upload_folder`` in one commit; pushing again updates the same repository in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from toolkit.errors import UserError
from toolkit.hub import WEIGHT_CHOICES
from toolkit.hub.reach import endpoint, reachable
from toolkit.hub.secrets import LOGIN_HINT, HubFailure, get_token, hub_error
from toolkit.output_paths import atomic_dir, check_writable
from toolkit.run_folder import (
    BASE_FOLDER,
    EVAL,
    FINAL,
    MERGED_FOLDER,
    MODEL_CONFIG,
    RECIPE,
    REPORT_HTML,
    REPORT_MD,
    RUN_INFO,
    is_adapter_folder,
    require_final,
)

UPLOAD_DIR = "upload"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RUN_FILES = (REPORT_MD, REPORT_HTML, RECIPE, RUN_INFO)


def push_run(run_dir: Path, repo_id: str, private: bool, what: str | None, dry_run: bool) -> None:
    """Publish ``run_dir`` to the Hub model repo ``repo_id`` (``what``: adapter, merged, report; None: by method)."""
    check_repo_id(repo_id)
    _check_run(run_dir, what)
    token = None if dry_run else _accepted_token(repo_id)  # before the upload folder (a merge, for --what merged)
    folder = build_upload_folder(run_dir, repo_id, what)
    if dry_run:
        print(f"dry run: would upload {folder} to {repo_id} ({'private' if private else 'public'}); nothing sent")
        print(describe_folder(folder))
        return
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message=f"Upload run {run_dir.name} ({what or 'default'})")
    except HubFailure as exc:
        raise hub_error(exc, repo_id) from None
    print(f"pushed {run_dir} to {url} (commit {commit.oid[:12]})")


def _accepted_token(repo_id: str) -> str:
    """The token, once the Hub answers and accepts it (``whoami``: not a read-only one); a one-line error before
    anything is written."""
    token = get_token()
    if token is None:
        raise UserError(f"not logged in: {LOGIN_HINT} (or use --dry-run)")
    if not reachable(endpoint()):
        raise UserError(f"hub: {endpoint()} cannot be reached, so nothing can be pushed to {repo_id} (check the "
                        "network or HF_ENDPOINT; --dry-run works offline)")
    try:
        who = HfApi(token=token).whoami()
    except HubFailure as exc:
        raise hub_error(exc, repo_id) from None
    if (who.get("auth") or {}).get("accessToken", {}).get("role") == "read":
        raise UserError(f"hub: the token is read-only, so nothing can be pushed to {repo_id}: use a token with write "
                        f"access ({LOGIN_HINT})")
    return token


def check_repo_id(repo_id: str) -> None:
    """A UserError naming --repo-id unless ``repo_id`` is ``org/name`` and the Hub's own check accepts it."""
    if "/" not in repo_id:
        raise UserError(f"--repo-id: {repo_id!r} is not of the form ORG/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"--repo-id: {' '.join(str(exc).split())}") from None


def build_upload_folder(run_dir: Path, repo_id: str, what: str | None) -> Path:
    """Rebuild ``RUN/upload/`` with everything to publish and return it."""
    _check_run(run_dir, what)
    files = _weight_files(run_dir, what) + _report_files(run_dir)
    _refuse_pickles(files)

    from toolkit.hub.card import build_card  # the evaluation registry: only when a folder is written

    folder = run_dir / UPLOAD_DIR
    with atomic_dir(folder) as scratch:
        for source, name in files:
            _place(source, scratch / name)
        build_card(run_dir, repo_id, what).save(scratch / "README.md")
    return folder


def _check_run(run_dir: Path, what: str | None) -> None:
    """A UserError unless ``run_dir`` is a finished run that has what ``what`` publishes."""
    final = require_final(run_dir)
    check_writable(run_dir, "RUN")  # the upload is staged in it (and a merge written to final/merged)
    if what not in (None, *WEIGHT_CHOICES):
        raise UserError(f"--what: {what!r} is not one of {', '.join(WEIGHT_CHOICES)}")
    if what in ("adapter", "merged") and not is_adapter_folder(final):
        raise UserError(f"--what {what}: {run_dir} is not a LoRA run (no final/adapter_config.json)")


def describe_folder(folder: Path) -> str:
    """One line per file (size, path) and a total: what an upload of ``folder`` sends."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = [f"{_size(p.stat().st_size):>10}  {p.relative_to(folder).as_posix()}" for p in files]
    total = sum(p.stat().st_size for p in files)
    return "\n".join(lines + [f"{_size(total):>10}  total, {len(files)} files"])


def _weight_files(run_dir: Path, what: str | None) -> list[tuple[Path, str]]:
    """(file, name in repo) of the weights, tokenizer and config: from final/merged/ for ``merged``, else final/."""
    final = run_dir / FINAL
    if what == "report":
        return []
    if what == "merged":
        from toolkit.hub.merge import merge_run

        merged = final / MERGED_FOLDER
        if not (merged / MODEL_CONFIG).is_file():
            merged = merge_run(run_dir, out=None)
        return _tree(merged, "")
    # final/README.md (peft writes one) gives way to our card.
    top = [(p, p.name) for p in sorted(final.iterdir()) if p.is_file() and p.name != "README.md"]
    base = final / BASE_FOLDER
    # A LoRA run from a random init keeps its base weights in final/base: the adapter is useless without them.
    return top + (_tree(base, f"{BASE_FOLDER}/") if is_adapter_folder(final) and base.is_dir() else [])


def _report_files(run_dir: Path) -> list[tuple[Path, str]]:
    named = [(run_dir / name, name) for name in RUN_FILES if (run_dir / name).is_file()]
    plots = [(p, p.name) for p in sorted(run_dir.glob("*.png"))]
    evals = [(p, p.relative_to(run_dir).as_posix()) for p in sorted((run_dir / EVAL).rglob("*.json"))]
    return named + plots + evals


def _tree(root: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(p, prefix + p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


def _refuse_pickles(files: list[tuple[Path, str]]) -> None:
    for source, _ in files:
        if source.suffix.lower() in PICKLE_SUFFIXES:
            raise UserError(f"{source}: pickle weight files are never uploaded; save the model as safetensors")


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` (no copy of multi-GB weights); copy where links are not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"
