"""push: the upload folder per --what, dry runs, user errors, and real pushes against the local fake hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from tests.fake_hub import FakeHub, closed_port
from tests.hub_runs import write_run
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.hub.push import build_upload_folder, push_run

REPORT_FILES = {"README.md", "report.md", "report.html", "loss.png", "needle_grid.png", "recipe.resolved.yaml",
                "run_info.json", "eval/base/long.json", "eval/base/short.json", "eval/stage-0-short/long.json",
                "eval/stage-0-short/short.json", "eval/stage-1-long/long.json", "eval/stage-1-long/short.json"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json"}


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_default_upload_of_a_lora_run_is_the_adapter_with_its_random_base(tmp_path: Path) -> None:
    run = write_run(tmp_path, "lora")
    folder = build_upload_folder(run, "me/tiny", None)
    assert folder == run / "upload"
    assert set(_listing(folder)) == REPORT_FILES | TOKENIZER | {
        "adapter_config.json", "adapter_model.safetensors", "config.json", "base/config.json",
        "base/model.safetensors", "base/generation_config.json"}
    assert _listing(folder)["adapter_model.safetensors"] == (run / "final" / "adapter_model.safetensors").read_bytes()
    assert "library_name: peft" in (folder / "README.md").read_text()
    assert (run / "final" / "README.md").read_text() != (folder / "README.md").read_text()


def test_full_run_uploads_full_weights_and_report_only_uploads_no_weights(tmp_path: Path) -> None:
    run = write_run(tmp_path, "full")
    full = set(_listing(build_upload_folder(run, "me/tiny", None)))
    assert full == REPORT_FILES | TOKENIZER | {"model.safetensors", "config.json", "generation_config.json"}
    report = set(_listing(build_upload_folder(run, "me/tiny", "report")))
    assert report == REPORT_FILES


def test_upload_folder_is_rebuilt_cleanly(tmp_path: Path) -> None:
    run = write_run(tmp_path, "full")
    folder = build_upload_folder(run, "me/tiny", None)
    (folder / "stale.txt").write_text("left over")
    build_upload_folder(run, "me/tiny", "report")
    assert not (folder / "stale.txt").exists() and not (folder / "model.safetensors").exists()
    assert not list(run.glob(".upload*"))


def test_dry_run_lists_files_and_sizes_without_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path, "full")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # any request would fail the command
    assert main(["push", str(run), "--repo-id", "me/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    size = (run / "final" / "model.safetensors").stat().st_size
    assert "nothing sent" in out
    assert f"{size / 1024:.1f} KB  model.safetensors" in out
    assert f"{len(REPORT_FILES | TOKENIZER) + 3} files" in out


@pytest.mark.parametrize("repo_id", ["tiny", "me/", "me/a b", "me/../x", "a/b/c", "me/x--y"])
def test_invalid_repo_id_names_the_flag(tmp_path: Path, repo_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["push", str(tmp_path), "--repo-id", repo_id, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --repo-id:") and err.count("\n") == 1


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        push_run(tmp_path / "nope", "me/x", private=False, what=None, dry_run=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: not a run folder \(it is empty: "):
        push_run(tmp_path / "empty", "me/x", private=False, what=None, dry_run=True)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "recipe.resolved.yaml").write_text("name: unfinished\n")
    with pytest.raises(UserError, match=r"final: not found; the run has no final model yet"):
        push_run(tmp_path / "unfinished", "me/x", private=False, what=None, dry_run=True)
    run = write_run(tmp_path, "full")
    with pytest.raises(UserError, match="--what adapter: .* is not a LoRA run"):
        push_run(run, "me/x", private=False, what="adapter", dry_run=True)
    (run / "final" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pytorch_model.bin: pickle weight files are never uploaded"):
        push_run(run, "me/x", private=False, what=None, dry_run=True)


def test_push_commits_the_folder_and_a_second_push_updates_in_place(tmp_path: Path, fake_hub: FakeHub) -> None:
    run = write_run(tmp_path, "full")
    push_run(run, "me/tiny", private=True, what=None, dry_run=False)
    repo = fake_hub.repos["me/tiny"]
    assert repo.private and len(repo.commits) == 1
    assert repo.files == _listing(run / "upload")

    (run / "report.md").write_text("# Report\n\nrevised\n")
    push_run(run, "me/tiny", private=True, what=None, dry_run=False)
    assert list(fake_hub.repos) == ["me/tiny"] and fake_hub.creations == 2
    assert len(repo.commits) == 2
    assert set(repo.commits[1].changed) == {"report.md"}  # unchanged files are not sent again
    assert repo.files["report.md"] == b"# Report\n\nrevised\n"


def test_push_without_login_or_with_a_bad_token(tmp_path: Path, fake_hub: FakeHub,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_run(tmp_path, "full")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError, match="not logged in: set HF_TOKEN"):
        push_run(run, "me/tiny", private=False, what=None, dry_run=False)
    bad = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", bad)
    with pytest.raises(UserError) as caught:
        push_run(run, "me/tiny", private=False, what=None, dry_run=False)
    assert str(caught.value) == ("not logged in or token lacks write access to me/tiny: "
                                 "set HF_TOKEN or run `hf auth login`")
    assert not fake_hub.repos and not (run / "upload").exists()  # refused before the upload folder is built
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    fake_hub.token_role = "read"
    with pytest.raises(UserError) as caught:
        push_run(run, "me/tiny", private=False, what=None, dry_run=False)
    assert str(caught.value) == ("hub: the token is read-only, so nothing can be pushed to me/tiny: use a token with "
                                 "write access (set HF_TOKEN or run `hf auth login`)")
    assert not fake_hub.repos and not (run / "upload").exists()


def test_an_unreachable_hub_is_one_line_before_anything_is_merged_or_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path, "lora")
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    address = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", address)
    monkeypatch.setattr(constants, "ENDPOINT", address)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    capsys.readouterr()  # write_run's progress bars
    assert main(["push", str(run), "--repo-id", "me/a", "--what", "merged"]) == 2
    assert capsys.readouterr().err == (f"error: hub: {address} cannot be reached, so nothing can be pushed to me/a "
                                       "(check the network or HF_ENDPOINT; --dry-run works offline)\n")
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before  # no final/merged, no upload/
