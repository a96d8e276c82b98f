"""Load the model a recipe names (hub, local folder, or random from an inline config) and models to evaluate."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from peft import PeftModel
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from toolkit.data.tokenizer import pretrained_tokenizer
from toolkit.errors import UserError, reason
from toolkit.file_reading import read_json_object
from toolkit.hub.ids import looks_local
from toolkit.model.attention import TORCH_VARLEN, TRAINING_ONLY, AttentionChoice, select_attention
from toolkit.model.lora import CausalLM, adapter_inputs_cast, apply_lora, unwrap_peft
from toolkit.model.precision import dtype_name, resolve_dtype
from toolkit.model.rope_methods import native_length_of
from toolkit.model.sources import check_model_source, check_tokenizer_folder, has_tokenizer
from toolkit.recipe.schema import MODEL_SIZE_KEYS, InitConfig, MethodSpec, ModelSpec
from toolkit.run_folder import ADAPTER_CONFIG, BASE_FOLDER, MODEL_CONFIG, is_adapter_folder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    """A model ready for training, with what was chosen for it and why."""

    model: CausalLM
    attention: str
    attention_reason: str
    dtype: torch.dtype
    native_length: int
    """Context length the loaded weights were trained for (rope ``original_max_position_embeddings`` or
    ``max_position_embeddings``)."""
    native_theta: float
    """RoPE theta of the loaded weights: the base that ``theta: auto`` scales from in every stage."""


EVAL_ATTENTION = dict.fromkeys(TRAINING_ONLY, "sdpa")
"""Training-only kernels and what evaluation (padding masks, KV cache) runs on instead."""


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block ``model`` is in eval mode, on an attention kernel that evaluates (:data:`EVAL_ATTENTION`), its
    float32 LoRA adapters fed float32 inputs (no autocast runs here); its train/eval mode and kernel are restored
    afterwards, also on error."""
    was_training = model.training
    base = unwrap_peft(model) if isinstance(model, (PreTrainedModel, PeftModel)) else None
    training_kernel = base.config._attn_implementation if base is not None else None
    if base is not None and training_kernel in EVAL_ATTENTION:
        base.set_attn_implementation(EVAL_ATTENTION[training_kernel])
    model.eval()
    try:
        with adapter_inputs_cast(model):
            yield model
    finally:
        model.train(was_training)
        if base is not None and training_kernel in EVAL_ATTENTION:
            base.set_attn_implementation(training_kernel)


def _first_line(exc: Exception) -> str:
    """The exception's first line (what failed; the lines after it give advice), or all of it as one line where the
    first ends with a colon (what follows it says what failed: "Couldn't instantiate the backend tokenizer from one
    of: ...")."""
    first = (str(exc).strip().splitlines() or [""])[0].strip()
    return reason(exc) if first.endswith(":") else first


def _load_failure(source: str, field: str, exc: Exception) -> UserError:
    """``field``'s source cannot be loaded: the exception's first line (:func:`_first_line`; a config field of the
    wrong type: all of it, which names the field)."""
    said = reason(exc) if isinstance(exc, StrictDataclassError) else _first_line(exc)
    owner = Path(source).parent  # read as a hub id, but maybe a mistyped local path
    mistyped = not looks_local(source) and owner.name and owner.is_dir()
    typo = f" ({owner} is a folder here, with no {Path(source).name} in it)" if mistyped else ""
    return UserError(f"{field}: cannot load {source!r}: {said or type(exc).__name__}{typo}")


def _pretrained(source: str, field: str, **kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with load failures turned into one-line user errors."""
    check_model_source(source, field)
    try:
        return AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **kwargs)
    except (OSError, ValueError, SafetensorError, StrictDataclassError) as exc:  # weights cut short, a bad config
        raise _load_failure(source, field, exc) from None


def model_config(spec: ModelSpec) -> PretrainedConfig:
    """The config of ``model.name_or_path`` at ``model.revision`` (no weights), read as :func:`load_model` reads it;
    a source that is no model or cannot be read is a one-line :class:`UserError` naming ``model.name_or_path``."""
    assert spec.name_or_path is not None  # the schema: name_or_path when there is no init_config
    check_model_source(spec.name_or_path, "model.name_or_path")
    try:
        return AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision,
                                          trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, StrictDataclassError) as exc:
        raise _load_failure(spec.name_or_path, "model.name_or_path", exc) from None


def recipe_config(spec: ModelSpec, tokenizer: Any) -> PretrainedConfig:
    """The config a run builds its model from, read once before the weights load: ``model.init_config`` as a
    LlamaConfig (:func:`random_config`), else ``model.name_or_path``'s at ``model.revision`` (:func:`model_config`)."""
    return random_config(spec.init_config, tokenizer) if spec.init_config is not None else model_config(spec)


def random_config(init_config: InitConfig, tokenizer: Any) -> LlamaConfig:
    """``model.init_config`` as a LlamaConfig (the fields it sets), its vocabulary and special ids from the
    tokenizer."""
    settings = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                **init_config.model_dump(exclude_none=True)}
    if settings["vocab_size"] < len(tokenizer):
        raise UserError(f"model.init_config.vocab_size: {settings['vocab_size']} is smaller than the tokenizer's "
                        f"{len(tokenizer)} tokens")
    try:
        return LlamaConfig(**settings)
    except KeyError as exc:  # "Missing required keys in `rope_parameters` for 'rope_type'='yarn': {'factor'}"
        said = str(exc.args[0] if exc.args else exc).strip('"')  # transformers quotes its own message
        raise UserError(f"model.init_config: {said}") from None
    except (TypeError, ValueError, StrictDataclassError) as exc:  # the last line says what: "TypeError: Field ..."
        raise UserError(f"model.init_config: {str(exc).strip().splitlines()[-1].strip()}") from None


def build_on_meta(config: PretrainedConfig, attention: str, dtype: torch.dtype, **kwargs: Any) -> PreTrainedModel:
    """The model's structure on the meta device: shapes and dtypes, no storage, no initialisation."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype, **kwargs)


def model_structure(spec: ModelSpec, config: PretrainedConfig) -> PreTrainedModel:
    """The recipe's model on the meta device, from its ``config`` (:func:`recipe_config`; seconds for 8B, no weights
    read): what a run checks the recipe against before loading it. Eager attention, which every architecture
    supports: the kernel is chosen apart (:func:`~toolkit.model.attention.select_attention`)."""
    if spec.name_or_path is None:  # init_config: a LlamaConfig
        return build_on_meta(config, "eager", torch.float32)
    remote = {"trust_remote_code": True, "code_revision": spec.revision} if spec.trust_remote_code else {}
    try:  # code_revision: the modelling code at the revision the config was read at (read by remote code only)
        return build_on_meta(config, "eager", torch.float32, **remote)
    except (OSError, ValueError) as exc:  # no causal LM (ValueError), remote code out of reach (OSError)
        raise _load_failure(spec.name_or_path, "model.name_or_path", exc) from None


def materialise(model: PreTrainedModel, device: torch.device, seed: int) -> PreTrainedModel:
    """Storage for a meta-device ``model`` on ``device``, filled by transformers' initialisation (seeded), which
    also recomputes the rotary ``inv_freq`` buffers that meta construction leaves empty."""
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    return model


def build_random(init_config: InitConfig, tokenizer: Any, attention: str, dtype: torch.dtype, seed: int,
                 device: torch.device) -> PreTrainedModel:
    """A randomly initialised Llama from ``model.init_config`` (vocabulary and special ids from the tokenizer).

    On CPU it is built in place as it always was (the same weights for the same seed); on an accelerator it is
    built on the meta device and initialised there, so that an 8B shape is ready in seconds, not CPU minutes.
    """
    config = random_config(init_config, tokenizer)
    if torch.device(device).type == "cpu":
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)
    return materialise(build_on_meta(config, attention, dtype), torch.device(device), seed)


def load_model(spec: ModelSpec, method: MethodSpec, tokenizer: Any, device: torch.device, seed: int, *,
               attention: AttentionChoice | None = None) -> LoadedModel:
    """The recipe's model on ``device``, with its attention and precision, LoRA-wrapped when asked; ``attention``:
    the kernel the run chose (:func:`~toolkit.model.attention.select_attention`), by default ``model.attention``'s
    choice on ``device``."""
    device = torch.device(device)
    dtype = resolve_dtype(spec.precision, device)
    implementation, reason = attention or select_attention(spec.attention, device, dtype)
    if implementation == TORCH_VARLEN:
        from toolkit.model.attention_varlen import register_torch_varlen

        register_torch_varlen()
    model: CausalLM
    if spec.backend == "unsloth":
        from toolkit.model.unsloth_backend import load_with_unsloth

        model = load_with_unsloth(spec, method, device, dtype, seed)
    elif spec.init_config is not None:
        model = build_random(spec.init_config, tokenizer, implementation, dtype, seed, device)
    else:
        assert spec.name_or_path is not None  # the schema: name_or_path when there is no init_config
        model = _pretrained(spec.name_or_path, "model.name_or_path", revision=spec.revision,
                            trust_remote_code=spec.trust_remote_code, attn_implementation=implementation, dtype=dtype)
    # transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self from mypy
    model.to(device)  # type: ignore[arg-type]
    native_length = native_length_of(model.config)
    native_theta = float(model.config.rope_parameters["rope_theta"])
    if method.kind == "lora" and spec.backend != "unsloth":
        model = apply_lora(model, method.lora, spec.revision)
    return LoadedModel(model=model, attention=implementation, attention_reason=reason, dtype=dtype,
                       native_length=native_length, native_theta=native_theta)


def _adapter_base(adapter_dir: Path) -> str:
    """Where a LoRA folder's base weights are: its own ``base/`` or the base named in adapter_config.json."""
    if (adapter_dir / BASE_FOLDER / MODEL_CONFIG).is_file():
        return str(adapter_dir / BASE_FOLDER)
    base = read_json_object(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}/adapter_config.json: names no base_model_name_or_path and there is no "
                        f"{BASE_FOLDER}/ folder")
    return base


def lora_sources(model: str, adapter: str | None) -> tuple[str, str | None]:
    """``(base, adapter)``: a LoRA run's ``final/`` given as the model names its own base."""
    if adapter is None and is_adapter_folder(model):
        return _adapter_base(Path(model)), model
    if adapter is not None and not is_adapter_folder(adapter):
        raise UserError(f"--adapter: no adapter_config.json in {adapter}")
    return model, adapter


def check_adapter_base(model: str, adapter: str, field: str, revision: str | None = None) -> None:
    """A UserError naming both unless ``model``'s config has the sizes (:data:`MODEL_SIZE_KEYS`) of the base
    ``adapter`` was trained on, as its config.json records it (a LoRA run's ``final/``): read before any weights load,
    so that an adapter of another model is one line, not transformers' size-mismatch report and a traceback. An
    adapter without config.json (peft's own folder), or a base whose config is not readable here, is checked as its
    weights load."""
    recorded = Path(adapter) / MODEL_CONFIG
    if not recorded.is_file():
        return
    try:
        base, _ = PretrainedConfig.get_config_dict(model, revision=revision)
    except (OSError, ValueError):  # no config (the weights' load names it)
        return
    trained = read_json_object(recorded)
    differ = [key for key in MODEL_SIZE_KEYS
              if trained.get(key) is not None and base.get(key) is not None and trained[key] != base[key]]
    if not differ:
        return
    named = read_json_object(Path(adapter) / ADAPTER_CONFIG).get("base_model_name_or_path")
    trained_on = f"base_model_name_or_path {named!r}" if named else "no base_model_name_or_path recorded"
    theirs, ours = (", ".join(f"{key} {sizes[key]}" for key in differ) for sizes in (trained, base))
    raise UserError(f"{adapter}: the adapter was trained on a different base model ({trained_on}) than {field} "
                    f"{model!r}: its config.json has {theirs}; {model!r} has {ours}")


def load_merged(model: str, adapter: str | None, field: str = "--model", **kwargs: Any) -> PreTrainedModel:
    """``model`` with ``adapter`` merged in; an adapter folder's config.json (the trained RoPE) replaces the base's,
    once its sizes are found to be the base's (:func:`check_adapter_base`)."""
    if adapter is not None and (revision := read_json_object(Path(adapter) / ADAPTER_CONFIG).get("revision")):
        kwargs.setdefault("revision", revision)  # the base's revision it was trained on
    if adapter is not None and (Path(adapter) / MODEL_CONFIG).is_file():
        check_model_source(model, field)
        check_adapter_base(model, adapter, field, kwargs.get("revision"))
        kwargs["config"] = AutoConfig.from_pretrained(adapter)
    loaded = _pretrained(model, field, **kwargs)
    if adapter is None:
        return loaded
    try:
        return PeftModel.from_pretrained(loaded, adapter).merge_and_unload()
    except (RuntimeError, SafetensorError) as exc:  # RuntimeError: an adapter trained on another model's shapes
        raise UserError(f"{adapter}: the adapter does not load onto {model!r}: "
                        f"{' '.join(str(exc).split())[:300]}") from None


def load_for_eval(model: str, adapter: str | None, device: torch.device | str | None, precision: str = "auto",
                  tokenizer: Any = None) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """A model to evaluate, its tokenizer, and a description of what was loaded.

    ``model`` is a hub id or folder: full weights, or a LoRA run's ``final/`` (adapter_config.json present),
    whose base comes from its ``base/`` folder or the adapter config. The adapter is merged into the weights.
    ``tokenizer``: :func:`eval_tokenizer`'s, where loaded already.
    """
    device = chosen_device(device)
    tokenizer = eval_tokenizer(model, adapter) if tokenizer is None else tokenizer
    base, adapter = lora_sources(model, adapter)
    dtype = resolve_dtype(precision, device)
    implementation, reason = select_attention("auto", device, dtype, training=False)
    loaded = load_merged(base, adapter, attn_implementation=implementation, dtype=dtype)
    loaded.to(device).eval()  # type: ignore[arg-type]  # as in load_model
    info = {"model": model, "base": base, "adapter": adapter, "device": str(device),
            "dtype": dtype_name(dtype), "attention": implementation, "attention_reason": reason,
            "rope_parameters": dict(loaded.config.rope_parameters),
            "max_position_embeddings": loaded.config.max_position_embeddings,
            "native_length": native_length_of(loaded.config)}
    log.info("attention: %s (%s); device: %s; %s", implementation, reason, device, info["dtype"])
    return loaded, tokenizer, info


def eval_tokenizer(model: str, adapter: str | None) -> Any:
    """The tokenizer of ``model`` to evaluate (the adapter's own where it has one; pad = eos where there is none, a
    UserError where there is neither): the evaluation checks its prompts with it before the model loads."""
    base, adapter = lora_sources(model, adapter)  # a LoRA folder given as the model: its base, checked next
    check_model_source(base, "--model")
    own = adapter is not None and has_tokenizer(Path(adapter))  # a peft adapter folder need hold no config.json
    source, field = (adapter, "--adapter") if own and adapter is not None else (base, "--model")
    check_tokenizer_folder(source, field)
    return pretrained_tokenizer(source, field, lambda exc: _load_failure(source, field, exc))


def chosen_device(device: torch.device | str | None) -> torch.device:
    """``device`` (default: CUDA where present, else CPU); a UserError naming --device when it is no device here."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device: {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if chosen.type not in ("cpu", "cuda"):
        raise UserError(f"--device: {device!r}: the toolkit runs on cpu or cuda (ROCm's GPUs are cuda devices)")
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device: {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return chosen
