"""``python -m toolkit export RUN --format gguf``: a run's final model as one GGUF file for llama.cpp and Ollama.

The writing is llama.cpp's own converter (``convert_hf_to_gguf.py`` from the pinned llama-cpp-python source
distribution, ``make llama-cpp`` or ``make export`` extracts it to ``.llama-cpp/converter/``), run by
:mod:`toolkit.export.llama_cpp_convert`. What is done here: merge a LoRA run first, refuse what llama.cpp would
not reproduce (a pre-tokenizer it lacks, a RoPE it computes differently), name the pre-tokenizer from the tokenizer's
configuration, and write YaRN's ``beta_fast``/``beta_slow`` explicitly with the values transformers trained with.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.export import OUTTYPES
from toolkit.export.child_process import child_failure, run_showing_stderr
from toolkit.export.pretokenizer import llama_cpp_pre_tokenizer
from toolkit.file_reading import read_json_object
from toolkit.model.folder_copy import with_config
from toolkit.model.rope_methods import GGUF_METHODS, METHODS
from toolkit.output_paths import atomic_file, check_writable
from toolkit.run_folder import FINAL, MODEL_CONFIG, holds_run_files, is_adapter_folder, require_final

log = logging.getLogger(__name__)

CONVERTER_DIR = Path(__file__).resolve().parents[2] / ".llama-cpp" / "converter"
ARCHITECTURES = ("LlamaForCausalLM",)
YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}  # transformers' defaults (modeling_rope_utils)
YARN_KEYS = {"rope_type", "rope_theta", "original_max_position_embeddings", "truncate", *METHODS["yarn"].keys}


def _model_folder(source: Path) -> Path:
    """The transformers folder to convert: a run's ``final/`` (a UserError, as for ``push``, when the run has not
    finished) or a model folder."""
    if (source / FINAL).is_dir() or holds_run_files(source):
        return require_final(source)
    if (source / MODEL_CONFIG).is_file():
        return source
    raise UserError(f"{source}: neither a run folder with final/ nor a model folder with {MODEL_CONFIG}")


def _merged(folder: Path, stack: ExitStack) -> Path:
    """``folder``, or its LoRA adapter merged into full weights in a temporary folder."""
    if is_adapter_folder(folder):
        converter_dir()  # fetched before minutes of merging
        merged = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gguf-merge-"))) / "merged"
        log.info("merging the LoRA adapter of %s", folder)
        from toolkit.model.saving import merge_adapter  # torch and peft, for LoRA runs only

        merge_adapter(folder, merged)
        folder = merged
    return folder


def _target(source: Path, out: str | Path | None, name: str, outtype: str) -> Path:
    """Where the file goes: ``out`` (into it when a folder, or when it ends with a slash; NAME-OUTTYPE.gguf), else
    beside the model; a UserError if it cannot, or if it would replace a file that is not ``name``'s export."""
    file_name = f"{name}-{outtype}.gguf"
    if out is None:
        target = (source if (source / FINAL).is_dir() else source.parent) / file_name
    else:
        folder = str(out).endswith(("/", os.sep)) or Path(out).is_dir()
        target = Path(out) / file_name if folder else Path(out)
    where = f"--out {out}" if out is not None else "export"
    if target.is_dir():
        raise UserError(f"{where}: {target} is a folder")
    if target.suffix.lower() != ".gguf":  # an existing file of another kind would be replaced
        raise UserError(f"{where}: {target} would hold a GGUF model under another name; name a .gguf file or a folder")
    if target.parent.is_file():
        raise UserError(f"{where}: {target.parent} is a file, not a folder")
    if not target.parent.is_dir():
        raise UserError(f"{where}: {target.parent} is not an existing folder")
    check_writable(target.parent, where)
    if target.exists():
        _check_own_export(target, name, where)
        log.info("replacing %s (an earlier export of %s)", target, name)
    return target


def _exported_name(path: Path) -> str | None:
    """The ``general.name`` of the GGUF file at ``path`` (the converter writes the run's or model folder's name);
    None when it is no readable GGUF file."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                return None
        return str(gguf_metadata(path).get("general.name", ""))
    except (OSError, ValueError, IndexError, struct.error):  # unreadable, or cut short or damaged past its magic
        return None


def _check_own_export(target: Path, name: str, where: str) -> None:
    """A UserError unless the existing ``target`` is a GGUF file whose ``general.name`` is ``name``: an earlier export
    of the same run (or model folder), which the new one may replace."""
    found = _exported_name(target)
    if found != name:
        what = "is no GGUF file" if found is None else f"is a GGUF file named {found!r} (its general.name)"
        raise UserError(f"{where}: {target} exists and {what}, not an earlier export of {name}; name another file, "
                        "or remove it first")


def _checked_config(config_json: Path) -> dict[str, Any]:
    """``config.json`` with YaRN's defaults written out; a UserError for what llama.cpp's Llama computes otherwise."""
    config = read_json_object(config_json)
    if not set(config.get("architectures") or ()) & set(ARCHITECTURES):
        raise UserError(f"{config_json} architectures: {config.get('architectures')}; GGUF export supports "
                        f"{', '.join(ARCHITECTURES)}")
    if rope := _checked_rope(config, config_json):
        config["rope_parameters"] = rope
    return config


def _checked_rope(config: dict[str, Any], config_json: Path) -> dict[str, Any]:
    """The config's ``rope_parameters`` with YaRN's defaults written out; a UserError for a RoPE llama.cpp computes
    otherwise."""
    rope = dict(config.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in GGUF_METHODS:
        raise UserError(f"{config_json} rope_parameters.rope_type: {rope_type!r} has no llama.cpp equivalent "
                        f"(supported: {', '.join(GGUF_METHODS)})")
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
        return {**YARN_DEFAULTS, **rope}
    return rope


def _staged(folder: Path, config: dict[str, Any], name: str, stack: ExitStack) -> Path:
    """A folder named ``name`` with ``folder``'s files (linked) and ``config`` as its ``config.json``: llama.cpp's
    converter names the model (``general.basename``, ``general.finetune``) after the folder it reads."""
    return with_config(folder, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gguf-src-"))) / name,
                       config)


def converter_dir() -> Path:
    if not (CONVERTER_DIR / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"{CONVERTER_DIR}: no llama.cpp converter; run `make llama-cpp` (or `make export`) to fetch it")
    return CONVERTER_DIR


def _convert(model_dir: Path, out: Path, outtype: str, pre_tokenizer: str, name: str, source: Path) -> None:
    """llama.cpp's converter on ``model_dir`` (the staged copy of ``source``, which errors name) into ``out``."""
    converter = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(converter), str(converter / "gguf-py")]))
    script = Path(__file__).with_name("llama_cpp_convert.py")
    print(f"converting to GGUF ({outtype}) with llama.cpp's converter", file=sys.stderr, flush=True)
    returncode, last_line = run_showing_stderr(
        [sys.executable, str(script), str(model_dir), str(out), outtype, pre_tokenizer, name], env)
    if returncode != 0:
        raise child_failure("llama.cpp's converter", f"converting {source}", returncode, last_line)


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF file's metadata as plain values (arrays left out), read back with the gguf package."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {key: field.contents() for key, field in fields.items()
            if not key.startswith("GGUF.") and len(field.types) == 1}


def export_gguf(source: Path, out: str | Path | None = None, outtype: str = "f16") -> Path:
    """Write ``source`` (a run or a model folder) as one GGUF file; return its path. ``out`` is the file, or a folder
    to write NAME-OUTTYPE.gguf into (an existing one, or a path ending with a slash; default: the run folder, or
    beside a model folder). An existing file there is replaced only when it is an earlier export of ``source``."""
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype: {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    folder, name = _model_folder(source), source.resolve().name
    target = _target(source, out, name, outtype)
    pre_tokenizer = llama_cpp_pre_tokenizer(folder / "tokenizer.json")  # a LoRA run's final/ holds its tokenizer
    if (folder / MODEL_CONFIG).is_file():  # and its trained RoPE: both refused, if at all, before the merge
        _checked_rope(read_json_object(folder / MODEL_CONFIG), folder / MODEL_CONFIG)
    with ExitStack() as stack:
        folder = _merged(folder, stack)
        config = _checked_config(folder / MODEL_CONFIG)
        if not any(folder.glob("*.safetensors")):  # else the converter writes a GGUF file without tensors
            raise UserError(f"{folder}: no weights to convert (no *.safetensors file)")
        with atomic_file(target) as partial:
            _convert(_staged(folder, config, name, stack), partial, outtype, pre_tokenizer, name, source)
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
