"""Fake run folders for the publishing tests: the layout the runner writes, with a tiny model in ``final/``
written by the runner's own ``save_final``.

Eval numbers are fixed here (``FINAL_SCORES``) so the tests can look for them in the model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests.micro_models import micro_config
from toolkit.model.lora import CausalLM
from toolkit.model.saving import save_final
from toolkit.recipe.schema import MethodSpec

NATIVE = 64
EXTENDED = 256
ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": NATIVE}
FINAL_TAG = "stage-1-long"
FINAL_SCORES: dict[str, Any] = {"niah_mean": 0.8125, "ruler_score": 0.7, "effective_length": 128,
                "ruler_by_length": {"64": 0.95, "128": 0.9, "256": 0.25}, "arc_acc": 0.4375}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def tiny_config(**overrides: object) -> LlamaConfig:
    return micro_config(**{"vocab_size": 64, "max_position_embeddings": NATIVE, "tie_word_embeddings": False,
                           **overrides})


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2} | {f"w{i}": i + 3 for i in range(61)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def extended_config() -> LlamaConfig:
    return tiny_config(rope_parameters=dict(ROPE), max_position_embeddings=EXTENDED)


def write_run(root: Path, method: str = "full") -> Path:
    """A finished two-stage run under ``root/run`` (``method``: full or lora) and return its folder."""
    run = root / "run"
    torch.manual_seed(0)
    model: CausalLM = LlamaForCausalLM(extended_config())
    if method == "lora":
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(model, lora)
    save_final(model, tiny_tokenizer(), run / "final", MethodSpec(kind=method), base_is_local_init=True)
    _write_run_files(run, method)
    return run


def _write_run_files(run: Path, method: str) -> None:
    stages = [{"name": "short", "seq_len": 128, "steps": 5, "max_position_embeddings": 128,
               "rope_parameters": {**ROPE, "factor": 2.0}},
              {"name": "long", "seq_len": EXTENDED, "steps": 5, "max_position_embeddings": EXTENDED,
               "rope_parameters": dict(ROPE)}]
    info = {"recipe": "tiny-test", "method": method, "device": "cpu", "precision": "float32", "attention": "sdpa",
            "attention_reason": "cpu", "versions": {"torch": torch.__version__},
            "base_model": "random init from model.init_config", "stages": stages}
    (run / "run_info.json").write_text(json.dumps(info))
    (run / "recipe.resolved.yaml").write_text(
        "name: tiny-test\nmodel: {init_config: {}, train_tokenizer: {}}\n"
        "train:\n  data: {source: synthetic, task: multikey, packing: pack}\n"
        "  stages:\n  - {name: short, seq_len: 128, max_steps: 5}\n"
        "  - {name: long, seq_len: 256, max_steps: 5, data: {source: hub, path: org/long-texts}}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"stage": 0, "step": 1, "global_step": 1, "loss": 4.0}) + "\n")
    (run / "report.md").write_text("# Report\n\n![loss](loss.png)\n")
    (run / "report.html").write_text("<html><body>report</body></html>")
    (run / "loss.png").write_bytes(PNG)
    (run / "needle_grid.png").write_bytes(PNG)
    _write_eval(run, "base", scale=0.5)
    _write_eval(run, "stage-0-short", scale=0.9)
    _write_eval(run, FINAL_TAG, scale=1.0)


def _write_eval(run: Path, tag: str, scale: float) -> None:
    s = FINAL_SCORES
    long_suite = {"suite": "long", "tag": tag, "model": "final", "tasks": {
        "passkey": {"type": "niah", "score": s["niah_mean"] * scale, "mean": s["niah_mean"] * scale,
                    "grid": {"128": {"0.0": 1.0, "0.5": 0.75}, "256": {"0.0": 0.75, "0.5": 0.75}}},
        "ruler_mini": {"type": "ruler", "score": s["ruler_score"] * scale,
                       "effective_length": s["effective_length"] if scale == 1.0 else 64,
                       "scores_by_length": {k: v * scale for k, v in s["ruler_by_length"].items()}}}}
    short_suite = {"suite": "short", "tag": tag, "model": "final", "tasks": {
        "arc_local": {"type": "lm_eval", "score": s["arc_acc"] * scale,
                      "metrics": {"arc_local": {"acc,none": s["arc_acc"] * scale, "acc_stderr,none": 0.05,
                                                "alias": "arc_local"}}}}}
    folder = run / "eval" / tag
    folder.mkdir(parents=True)
    (folder / "long.json").write_text(json.dumps(long_suite))
    (folder / "short.json").write_text(json.dumps(short_suite))
