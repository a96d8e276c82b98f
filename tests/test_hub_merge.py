"""merge: a LoRA run's adapter folded into full weights that load with plain transformers and keep the RoPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from tests.hub_runs import EXTENDED, ROPE, write_run
from toolkit.errors import UserError
from toolkit.hub.merge import merge_run
from toolkit.hub.push import build_upload_folder


@torch.no_grad()
def test_merged_weights_equal_base_plus_adapter_and_keep_rope(tmp_path: Path) -> None:
    run = write_run(tmp_path, "lora")
    merged_dir = merge_run(run, out=None)
    assert merged_dir == run / "final" / "merged"
    assert not [p.name for p in (run / "final").iterdir() if p.name.startswith(".")]  # no scratch left

    final = run / "final"
    base = AutoModelForCausalLM.from_pretrained(final / "base", config=AutoConfig.from_pretrained(final))
    ids = torch.arange(3, 3 + 60).repeat(3)[None, :160]  # past the native 64 positions
    plain = base(ids).logits
    expected = PeftModel.from_pretrained(base, final).eval()(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    actual = merged(ids).logits

    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, plain, atol=1e-3)  # the adapter changed something
    assert merged.config.rope_parameters == ROPE
    assert merged.config.max_position_embeddings == EXTENDED
    assert sorted(p.name for p in merged_dir.glob("*.safetensors")) == ["model.safetensors"]
    assert (merged_dir / "tokenizer.json").is_file()

    files = {p.relative_to(run / "upload").as_posix() for p in build_upload_folder(run, "me/x", "merged").rglob("*")}
    assert "model.safetensors" in files and "adapter_model.safetensors" not in files
    assert "library_name: transformers" in (run / "upload" / "README.md").read_text()


def test_full_run_has_nothing_to_merge(tmp_path: Path) -> None:
    run = write_run(tmp_path, "full")
    with pytest.raises(UserError, match=r"nothing to merge: .* is not a LoRA run"):
        merge_run(run, out=None)


def test_an_earlier_merge_is_replaced_and_any_other_model_folder_kept(tmp_path: Path) -> None:
    """``--out`` naming the folder of an earlier merge (it holds ``merged_from.json``) merges again into it; the
    adapter's base, even one an earlier merge made, is never replaced."""
    run = write_run(tmp_path, "lora")
    out = tmp_path / "merged-model"
    assert merge_run(run, out=out) == out
    assert list(json.loads((out / "merged_from.json").read_text())) == ["base_model_name_or_path"]
    (out / "stale.txt").write_text("from before")
    merge_run(run, out=out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()

    base = run / "final" / "base"
    (base / "merged_from.json").write_text("{}")  # as if the base were itself an earlier merge
    with pytest.raises(UserError, match=r"--out: .*/final/base is the base model of the adapter; name a new folder"):
        merge_run(run, out=base)
    assert (base / "model.safetensors").is_file()
