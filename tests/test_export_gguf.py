"""GGUF export (toolkit/export): the pre-tokenizer named from tokenizer.json, what llama.cpp cannot reproduce refused
with exit 2 and one line, and, once llama.cpp's converter is fetched (``make llama-cpp``), the written file read back
with the gguf package: RoPE and context metadata, tokenizer settings, weights (a LoRA run's merged)."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.real_model import SMALL_MODEL, needs_converter, needs_small_model
from tests.runs import ROOT, train
from toolkit.cli import main
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.export.pretokenizer import LLAMA3_SPLIT, llama_cpp_pre_tokenizer
from toolkit.export.to_gguf import _staged, gguf_metadata
from toolkit.recipe.schema import TokenizerTraining

NATIVE, FACTOR = 64, 4
EXPORT_RECIPE: dict[str, Any] = copy.deepcopy(MICRO_RECIPE)
EXPORT_RECIPE["model"]["init_config"]["tie_word_embeddings"] = True  # as the default recipe
EXPORT_RECIPE["train"]["stages"][1] = {
    "name": "long", "seq_len": NATIVE * FACTOR, "max_steps": 2, "lr": 1e-3, "batch_size": 1,
    "rope": {"type": "yarn", "factor": float(FACTOR), "original_max_position_embeddings": NATIVE}}


def micro_run(folder: Path, *overrides: str) -> Path:
    """The micro recipe trained with a last stage at 4x its native 64 tokens (YaRN x4): ``folder/run``."""
    recipe = write_recipe(folder, dict(EXPORT_RECIPE, output={"dir": str(folder / "run")}))
    assert train(recipe, *overrides) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def tokenizer_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerTraining(vocab_size=320, corpus_documents=200), seed=0).save_pretrained(folder)
    return json.loads((folder / "tokenizer.json").read_text())


def _written(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(config))
    return path


def test_the_tiny_recipes_tokenizer_is_llama_cpps_smollm(tokenizer_config, tmp_path: Path) -> None:
    """Each digit alone, then GPT-2's byte-level split: llama.cpp's "smollm" ("\\p{N}" then the GPT-2 regex)."""
    assert llama_cpp_pre_tokenizer(_written(tmp_path, tokenizer_config)) == "smollm"


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe"])
def test_gpt2_and_llama3_splits_are_named(name: str, tokenizer_config, tmp_path: Path) -> None:
    config = copy.deepcopy(tokenizer_config)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if name == "gpt-2":
        config["pre_tokenizer"] = byte_level
    else:
        split = {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
        config["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
        config["model"]["ignore_merges"] = True
    assert llama_cpp_pre_tokenizer(_written(tmp_path, config)) == name


def _metaspace(config: dict[str, Any]) -> None:
    config["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}


def _nfc(config: dict[str, Any]) -> None:
    config["normalizer"] = {"type": "NFC"}


def _digit_runs(config: dict[str, Any]) -> None:
    config["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = False


def _ignore_merges(config: dict[str, Any]) -> None:
    config["model"]["ignore_merges"] = True


def _no_letter_a(config: dict[str, Any]) -> None:
    del config["model"]["vocab"]["A"]


@pytest.mark.parametrize(("change", "field"), [
    (_metaspace, "pre_tokenizer"), (_nfc, "normalizer"), (_digit_runs, "pre_tokenizer"),
    (_ignore_merges, "model.ignore_merges"), (_no_letter_a, "model.vocab: no token for the byte(s) 0x41")])
def test_what_llama_cpp_would_split_differently_is_refused(change, field: str, tokenizer_config, tmp_path: Path):
    config = copy.deepcopy(tokenizer_config)
    change(config)
    with pytest.raises(UserError, match=re.escape(f"tokenizer.json {field}")) as caught:
        llama_cpp_pre_tokenizer(_written(tmp_path, config))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("rope", "field"), [
    ({"rope_type": "dynamic", "factor": 2.0}, "rope_parameters.rope_type: 'dynamic'"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "attention_factor": 1.0},
     "rope_parameters.attention_factor"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0},
     "rope_parameters.mscale")])
def test_a_rope_llama_cpp_computes_otherwise_exits_2(rope: dict, field: str, tokenizer_config, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _written(tmp_path, tokenizer_config)
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "rope_parameters": dict(rope, rope_theta=10000.0)}))
    assert main(["export", str(tmp_path), "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"config.json {field}" in err, err


def test_a_folder_without_a_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--format", "gguf"]) == 2
    assert "neither a run folder with final/ nor a model folder" in capsys.readouterr().err


@needs_converter
def test_export_without_check_imports_no_evaluation_code(export_run: Path, tmp_path: Path) -> None:
    """The needle check and the eval registry (seconds of imports) load only for ``--check``: a fresh process that
    exports a run."""
    probe = ("import sys; from toolkit.cli import main; code = main(['export', sys.argv[1], '--format', 'gguf', "
             "'--out', sys.argv[2]]); print(code, *sorted(m for m in ('toolkit.export.llama_cpp_needles', "
             "'toolkit.evals.registry') if m in sys.modules))")
    out = tmp_path / "model.gguf"
    done = subprocess.run([sys.executable, "-c", probe, str(export_run), str(out)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.stdout.strip().splitlines()[-1] == "0" and out.is_file(), done.stdout + done.stderr


def _model_without_tokenizer(folder: Path) -> Path:
    """A model folder that converting would fail on (no tokenizer.json): an --out refused first never gets there."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return folder


@pytest.mark.parametrize(("out", "message"), [
    ("missing/m.gguf", "--out {tmp}/missing/m.gguf: {tmp}/missing is not an existing folder"),
    ("newdir/", "--out {tmp}/newdir/: {tmp}/newdir is not an existing folder"),
    ("taken", "--out {tmp}/taken: {tmp}/taken/model-f16.gguf is a folder"),
    ("config.json/m.gguf", "--out {tmp}/config.json/m.gguf: {tmp}/config.json is a file, not a folder"),
    ("config.json", "--out {tmp}/config.json: {tmp}/config.json would hold a GGUF model under another name; name a "
                    ".gguf file or a folder")])
def test_an_unusable_out_exits_2_before_converting(out: str, message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = _model_without_tokenizer(tmp_path / "model")
    (tmp_path / "taken" / "model-f16.gguf").mkdir(parents=True)
    (tmp_path / "config.json").write_text("{}")
    assert main(["export", str(model), "--format", "gguf", "--out", f"{tmp_path}/{out}"]) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model", "taken"]


def _gguf_named(path: Path, name: str) -> Path:
    """A small GGUF file whose general.name is ``name`` (as the converter names an export after its run)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("existing", "what"), [
    ("junk", "is no GGUF file"), ("", "is no GGUF file"), ("cut", "is no GGUF file"),
    ("other", "is a GGUF file named 'other' (its general.name)")])
def test_an_existing_file_that_is_no_export_of_the_model_is_kept(existing: str, what: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Only an earlier export of the same run or model folder (a GGUF file named after it) is replaced: anything
    else at --out is refused before converting, and kept."""
    model = _model_without_tokenizer(tmp_path / "model")
    target = tmp_path / "m.gguf"
    if existing in ("other", "cut"):
        _gguf_named(target, "other")
        if existing == "cut":
            target.write_bytes(target.read_bytes()[:100])
    else:
        target.write_text(existing)
    before = target.read_bytes()
    assert main(["export", str(model), "--format", "gguf", "--out", str(target)]) == 2
    assert capsys.readouterr().err == (f"error: --out {target}: {target} exists and {what}, not an earlier export of "
                                       "model; name another file, or remove it first\n")
    assert target.read_bytes() == before


def test_an_earlier_export_of_the_model_is_replaced_and_said_so(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = _model_without_tokenizer(tmp_path / "model")
    target = _gguf_named(tmp_path / "m.gguf", "model")
    assert main(["export", str(model), "--format", "gguf", "--out", str(target)]) == 2  # no tokenizer.json to convert
    said = capsys.readouterr().err.splitlines()
    assert said[0] == f"replacing {target} (an earlier export of model)" and "tokenizer.json" in said[1], said


def test_an_unfinished_run_is_named_as_push_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_recipe(run, MICRO_RECIPE, "recipe.resolved.yaml")
    expected = f"error: {run / 'final'}: not found; the run has no final model yet (train it to the end first)\n"
    assert main(["export", str(run), "--format", "gguf"]) == 2
    assert capsys.readouterr().err == expected
    assert main(["push", str(run), "--repo-id", "me/x", "--dry-run"]) == 2
    assert capsys.readouterr().err == expected
    assert sorted(p.name for p in run.iterdir()) == ["recipe.resolved.yaml"]


def test_an_out_folder_without_write_permission_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's probe (a temporary file in the folder) is refused as the OS refuses a folder without write
    permission; root, as CI runs, may write in any folder, so the refusal is the probe's, in that folder alone."""
    model = _model_without_tokenizer(tmp_path / "model")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    probe = tempfile.TemporaryFile

    def refused_in_locked(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs.get("dir") or "") == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(locked))
        return probe(*args, **kwargs)

    monkeypatch.setattr("toolkit.export.to_gguf.tempfile.TemporaryFile", refused_in_locked)
    assert main(["export", str(model), "--format", "gguf", "--out", str(locked)]) == 2
    message = f"--out {locked}: cannot write in {locked} ({os.strerror(errno.EACCES)})"
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(locked.iterdir()) == []


@pytest.fixture
def full_run(export_run: Path) -> Path:
    return export_run


def _tensor(path: Path, name: str) -> np.ndarray:
    from gguf import GGUFReader

    return next(t.data for t in GGUFReader(path).tensors if t.name == name)


@needs_converter
def test_export_keeps_the_extended_context_and_the_tokenizer(full_run: Path, micro_gguf) -> None:
    exported = micro_gguf("f32")  # no --out: beside the run
    path = full_run / "run-f32.gguf"
    assert exported.path == path and f"wrote {path}" in exported.out
    meta = gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "run"  # the run's name, and nothing read off a temporary folder's
    assert "general.finetune" not in meta and not any("gguf-src" in str(value) for value in meta.values())
    assert meta["llama.context_length"] == NATIVE * FACTOR
    assert meta["llama.rope.freq_base"] == 10000.0
    assert meta["llama.rope.scaling.type"] == "yarn"
    assert meta["llama.rope.scaling.factor"] == FACTOR
    assert meta["llama.rope.scaling.original_context_length"] == NATIVE
    assert (meta["llama.rope.scaling.yarn_beta_fast"], meta["llama.rope.scaling.yarn_beta_slow"]) == (32.0, 1.0)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (0, 1)
    weights = load_file(full_run / "final" / "model.safetensors")
    np.testing.assert_array_equal(_tensor(path, "token_embd.weight"), weights["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(_tensor(path, "blk.1.attn_v.weight"),
                                  weights["model.layers.1.self_attn.v_proj.weight"].numpy())


@needs_converter
def test_exporting_a_run_again_replaces_its_own_file(full_run: Path, micro_gguf,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = micro_gguf("f32").path  # beside the run, named after it
    assert main(["export", str(full_run), "--format", "gguf", "--outtype", "f32"]) == 0
    printed, said = capsys.readouterr()
    assert f"replacing {path} (an earlier export of run)" in said.splitlines() and f"wrote {path}" in printed
    assert gguf_metadata(path)["general.name"] == "run"


def test_the_converter_reads_a_folder_named_as_the_model(tmp_path: Path) -> None:
    """llama.cpp's converter takes general.basename and general.finetune from its folder's name: a temporary
    folder's random name would land in the file (and make each export differ)."""
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with ExitStack() as stack:
        staged = _staged(tmp_path, {"model_type": "llama"}, "tiny-passkey", stack)
        assert staged.name == "tiny-passkey" and (staged / "weights.safetensors").is_symlink()
        assert json.loads((staged / "config.json").read_text()) == {"model_type": "llama"}


@needs_converter
def test_out_naming_a_folder_writes_run_name_and_outtype_into_it(micro_gguf) -> None:
    exported = micro_gguf("q8_0")  # --out FOLDER
    path = exported.path
    assert f"wrote {path}" in exported.out
    assert "converting to GGUF (q8_0)" in exported.err and "Writing: 100%" in exported.err  # the converter's bar, live
    assert [p.name for p in path.parent.iterdir()] == ["run-q8_0.gguf"]
    meta = gguf_metadata(path)
    assert (meta["general.file_type"], meta["llama.context_length"]) == (7, NATIVE * FACTOR)


@needs_converter
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_each_outtype_file_holds_its_tensor_types(outtype: str, micro_gguf) -> None:
    """The matrices in ``outtype`` (2 bytes a weight, or 8 bits and a scale per block of 32), the norms in f32."""
    from gguf import GGMLQuantizationType, GGUFReader

    out = micro_gguf(outtype).path
    assert gguf_metadata(out)["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]
    assert gguf_metadata(out)["llama.rope.scaling.factor"] == FACTOR
    types = {t.name: t.tensor_type for t in GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType[outtype.upper()]
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32


@needs_converter
def test_a_converter_failure_is_one_line_naming_its_last_message(full_run: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(full_run / "final", model)
    weights = model / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:100])  # cut inside its header
    need = 8 + int.from_bytes(whole[:8], "little")  # safetensors: the header's length, then the header
    assert main(["export", str(model), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed:")]
    assert failures == [f"failed: llama.cpp's converter failed while converting {model}: ValueError: Could not read "
                        f"complete metadata. Need {need} bytes, got 100"], failures
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no GGUF, whole or partial


@needs_converter
def test_a_lora_run_is_merged_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A LoRA run is merged, then converted; what llama.cpp would compute otherwise is refused before the merge."""
    run = micro_run(tmp_path, "method.kind=lora", "method.lora.r=4")
    out = tmp_path / "lora.gguf"
    assert main(["export", str(run), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    from toolkit.model.loading import load_merged, lora_sources

    merged = load_merged(*lora_sources(str(run / "final"), None), dtype=torch.float32).state_dict()
    base = load_file(run / "final" / "base" / "model.safetensors")
    name = "model.layers.0.self_attn.v_proj.weight"
    assert not torch.equal(merged[name], base[name])
    np.testing.assert_allclose(_tensor(out, "blk.0.attn_v.weight"), merged[name].numpy(), rtol=0, atol=1e-6)
    assert gguf_metadata(out)["llama.rope.scaling.type"] == "yarn"

    config = json.loads((run / "final" / "config.json").read_text())
    config["rope_parameters"]["rope_type"] = "dynamic"
    (run / "final" / "config.json").write_text(json.dumps(config))
    import toolkit.model.saving

    monkeypatch.setattr(toolkit.model.saving, "merge_adapter", lambda *a: pytest.fail("merged before the check"))
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "dynamic.gguf")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run / 'final' / 'config.json'} rope_parameters.rope_type: ")


@needs_converter
@needs_small_model
def test_the_real_small_model_exports(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct: 30 layers, tied embeddings, GPT-2's split, ChatML template, native 8K."""
    out = tmp_path / "smollm2.gguf"
    assert main(["export", str(SMALL_MODEL), "--format", "gguf", "--outtype", "q8_0", "--out", str(out)]) == 0
    meta = gguf_metadata(out)
    assert (meta["llama.block_count"], meta["llama.context_length"], meta["llama.rope.freq_base"]) == (30, 8192, 1e5)
    assert "llama.rope.scaling.type" not in meta
    assert meta["tokenizer.ggml.pre"] == "gpt-2" and "<|im_start|>" in meta["tokenizer.chat_template"]
