"""``python -m toolkit export RUN --format gguf``: a run's final model as one GGUF file for llama.cpp and Ollama.

The writing is llama.cpp's own converter (``convert_hf_to_gguf.py`` from the pinned llama-cpp-python source
distribution, ``make llama-cpp`` or ``make export`` extracts it to ``.llama-cpp/converter/``), run by
:mod:`toolkit.export.llama_cpp_convert`. What is done here: merge a LoRA run first, refuse what llama.cpp would
not reproduce (a pre-tokenizer it lacks, a RoPE it computes differently), name the pre-tokenizer from the tokenizer's
configuration, and write YaRN's ``beta_fast``/``beta_slow`` explicitly with the values transformers trained with.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from toolkit.errors import RunFailure, UserError
from toolkit.export.pretokenizer import llama_cpp_pre_tokenizer
from toolkit.run_folder import FINAL
from toolkit.saving import merge_adapter

log = logging.getLogger(__name__)

CONVERTER_DIR = Path(__file__).resolve().parents[2] / ".llama-cpp" / "converter"
OUTTYPES = ("f16", "bf16", "q8_0", "f32")
ARCHITECTURES = ("LlamaForCausalLM",)
ROPE_TYPES = ("default", "linear", "yarn", "llama3")  # the ones llama.cpp's Llama computes as transformers does
YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}  # transformers' defaults (modeling_rope_utils)
YARN_KEYS = {"rope_type", "rope_theta", "factor", "original_max_position_embeddings", "attention_factor", "truncate",
             *YARN_DEFAULTS}


def _model_folder(source: Path, stack: ExitStack) -> tuple[Path, str]:
    """The transformers folder to convert (a run's ``final/``, merged first if LoRA, or a model folder), and a name."""
    if (source / FINAL).is_dir():
        folder = source / FINAL
    elif (source / "config.json").is_file():
        folder = source
    else:
        raise UserError(f"{source}: neither a run folder with final/ nor a model folder with config.json")
    if (folder / "adapter_config.json").is_file():
        merged = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gguf-merge-"))) / "merged"
        log.info("merging the LoRA adapter of %s", folder)
        merge_adapter(folder, merged)
        folder = merged
    return folder, source.resolve().name


def _checked_config(config_json: Path) -> dict[str, Any]:
    """``config.json`` with YaRN's defaults written out; a UserError for what llama.cpp's Llama computes otherwise."""
    config = json.loads(config_json.read_text())
    if not set(config.get("architectures") or ()) & set(ARCHITECTURES):
        raise UserError(f"{config_json} architectures: {config.get('architectures')}; GGUF export supports "
                        f"{', '.join(ARCHITECTURES)}")
    rope = dict(config.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise UserError(f"{config_json} rope_parameters.rope_type: {rope_type!r} has no llama.cpp equivalent "
                        f"(supported: {', '.join(ROPE_TYPES)})")
    if rope_type == "yarn":
        extra = sorted(set(rope) - YARN_KEYS)
        if extra:
            raise UserError(f"{config_json} rope_parameters.{extra[0]}: llama.cpp's YaRN has no such setting")
        if not rope.get("factor") or not rope.get("original_max_position_embeddings"):
            raise UserError(f"{config_json} rope_parameters: YaRN needs factor and original_max_position_embeddings")
        if rope.get("truncate", True) is not True:
            raise UserError(f"{config_json} rope_parameters.truncate: false; llama.cpp's YaRN always truncates")
        default_attention = 0.1 * math.log(rope["factor"]) + 1.0
        if abs(rope.get("attention_factor", default_attention) - default_attention) > 1e-6:
            raise UserError(f"{config_json} rope_parameters.attention_factor: {rope['attention_factor']}; llama.cpp "
                            f"always uses YaRN's 0.1*ln(factor)+1 = {default_attention:.6f}")
        config["rope_parameters"] = {**YARN_DEFAULTS, **rope}
    return config


def _staged(folder: Path, config: dict[str, Any], stack: ExitStack) -> Path:
    """A folder with ``folder``'s files (linked) and ``config`` as its ``config.json``."""
    staged = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gguf-src-")))
    for item in folder.iterdir():
        if item.name != "config.json":
            (staged / item.name).symlink_to(item.resolve())
    (staged / "config.json").write_text(json.dumps(config, indent=2))
    return staged


def converter_dir() -> Path:
    if not (CONVERTER_DIR / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"{CONVERTER_DIR}: no llama.cpp converter; run `make llama-cpp` (or `make export`) to fetch it")
    return CONVERTER_DIR


def _convert(model_dir: Path, out: Path, outtype: str, pre_tokenizer: str, name: str) -> None:
    converter = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(converter), str(converter / "gguf-py")]))
    script = Path(__file__).with_name("llama_cpp_convert.py")
    done = subprocess.run([sys.executable, str(script), str(model_dir), str(out), outtype, pre_tokenizer, name],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RunFailure(f"llama.cpp's converter failed on {model_dir}: {lines[-1]}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF file's metadata as plain values (arrays left out), read back with the gguf package."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {key: field.contents() for key, field in fields.items()
            if not key.startswith("GGUF.") and len(field.types) == 1}


def export_gguf(source: Path, out: Path | None = None, outtype: str = "f16") -> Path:
    """Write ``source`` (a run or a model folder) as one GGUF file; return its path (default RUN/NAME-OUTTYPE.gguf)."""
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype: {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    with ExitStack() as stack:
        folder, name = _model_folder(source, stack)
        pre_tokenizer = llama_cpp_pre_tokenizer(folder / "tokenizer.json")
        config = _checked_config(folder / "config.json")
        target = out if out is not None else (source if (source / FINAL).is_dir() else source.parent) / (
            f"{name}-{outtype}.gguf")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        _convert(_staged(folder, config, stack), partial, outtype, pre_tokenizer, name)
        os.replace(partial, target)
    meta = gguf_metadata(target)
    arch = meta["general.architecture"]
    rope = meta.get(f"{arch}.rope.scaling.type", "none")
    if rope != "none":
        rope += (f" x{meta[f'{arch}.rope.scaling.factor']:g} from "
                 f"{meta.get(f'{arch}.rope.scaling.original_context_length', '?')}")
    print(f"wrote {target} ({outtype}, {target.stat().st_size / 2**20:.1f} MiB): context "
          f"{meta[f'{arch}.context_length']}, RoPE {rope}, freq base {meta[f'{arch}.rope.freq_base']:g}, "
          f"pre-tokenizer {meta['tokenizer.ggml.pre']}")
    return target
