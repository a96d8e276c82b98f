"""RoPE extension: derive a stage's ``config.rope_parameters`` and switch an in-memory model to it.

transformers 5 keeps RoPE in ``config.rope_parameters = {"rope_type", "rope_theta", <type keys>}`` and computes
the rotary inverse frequencies once, when the rotary embedding module is built. :func:`apply_rope` therefore
rewrites the config *and* rebuilds that module, so one model can move from stage to stage without a reload.
See ``docs/rope.md`` for the methods and their keys.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from toolkit.schema import RopeSpec

_USES_ORIGINAL = {"yarn", "llama3", "longrope"}
"""Types whose transformers implementation reads ``original_max_position_embeddings``."""
_TYPE_KEYS = ("beta_fast", "beta_slow", "attention_factor", "low_freq_factor", "high_freq_factor",
              "short_factor", "long_factor")
_LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}


def theta_for_length(base_theta: float, native_length: int, target_length: int, head_dim: int) -> float:
    """NTK-aware RoPE base for ``target_length``: ``base * s ** (d / (d - 2))`` with ``s = target / native``.

    The rule keeps the lowest RoPE frequency's wavelength growing with the context while the highest
    frequencies barely move. Source: bloc97, "NTK-Aware Scaled RoPE" (r/LocalLLaMA, 2023), written as
    ``b' = b * s^(|D|/(|D|-2))`` in Peng et al., "YaRN" (arXiv:2309.00071, section 3.1); transformers' dynamic
    NTK uses the same exponent. ``d`` is the rotary dimension (the head dimension for Llama). A target no
    longer than the native length keeps ``base_theta``.

    Example: Llama-3-8B (base 500000, native 8192, head_dim 128) at 1048576 tokens: s = 128,
    theta = 500000 * 128 ** (128 / 126) ~= 6.91e7.
    """
    if native_length <= 0 or target_length <= 0 or head_dim <= 2:
        raise ValueError("native_length and target_length must be > 0 and head_dim > 2")
    scale = target_length / native_length
    if scale <= 1.0:
        return float(base_theta)
    return float(base_theta * scale ** (head_dim / (head_dim - 2)))


def rotary_dim(config: Any) -> int:
    """The number of dimensions per head that RoPE rotates (head_dim times partial_rotary_factor)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * (config.rope_parameters or {}).get("partial_rotary_factor", 1.0))


def rope_parameters(spec: RopeSpec, seq_len: int, config: Any, native_length: int,
                    base_theta: float | None = None) -> dict[str, Any]:
    """The complete ``config.rope_parameters`` for a stage of ``seq_len`` tokens.

    - ``rope_theta``: ``spec.theta``; for ``"auto"`` :func:`theta_for_length` from ``base_theta`` at
      ``native_length``; for ``None``, ``base_theta``. ``base_theta`` is the loaded model's theta
      (``LoadedModel.native_theta``), so stages never compound; it defaults to the config's current theta.
    - ``factor``: ``spec.factor``, else ``seq_len / original`` (at least 1), where ``original`` is
      ``spec.original_max_position_embeddings`` or ``native_length``.
    - ``original_max_position_embeddings`` for yarn, llama3 and longrope; the other type keys only when the
      spec gives them, except llama3's ``low_freq_factor=1`` and ``high_freq_factor=4`` (Llama 3.1's values).
    """
    base = base_theta if base_theta is not None else config.rope_parameters["rope_theta"]
    original = spec.original_max_position_embeddings or native_length
    if spec.theta == "auto":
        theta = theta_for_length(base, native_length, seq_len, rotary_dim(config))
    else:
        theta = spec.theta if spec.theta is not None else base
    params: dict[str, Any] = {"rope_type": spec.type, "rope_theta": float(theta)}
    if spec.type == "default":
        return params
    params["factor"] = float(spec.factor or max(1.0, seq_len / original))
    if spec.type in _USES_ORIGINAL:
        params["original_max_position_embeddings"] = int(original)
    if spec.type == "llama3":
        params.update(_LLAMA3_DEFAULTS)
    params.update({key: getattr(spec, key) for key in _TYPE_KEYS if getattr(spec, key) is not None})
    return params


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_rope(model: nn.Module, params: dict[str, Any], max_position_embeddings: int) -> None:
    """Switch ``model`` (plain or peft-wrapped) to ``params`` and ``max_position_embeddings``, in place.

    Rebuilds every rotary embedding module from the updated config, on the device and dtype of the old one.
    For ``dynamic``, transformers only rescales beyond ``config.max_position_embeddings``, so that field is set
    to ``max_position_embeddings / factor`` (the original length when the factor was derived from it).
    """
    base = _base_model(model)
    config = base.config
    config.rope_parameters = dict(params)
    if params["rope_type"] == "dynamic":
        max_position_embeddings = round(max_position_embeddings / params["factor"])
    config.max_position_embeddings = int(max_position_embeddings)
    config.standardize_rope_params()
    config.validate_rope()
    rotaries = [(name, module) for name, module in base.named_modules()
                if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq")]
    if not rotaries:
        raise TypeError(f"{type(base).__name__} has no rotary embedding module to rebuild")
    for name, old in rotaries:
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        fresh = type(old)(config=config)
        setattr(parent, child, fresh.to(device=old.inv_freq.device, dtype=old.inv_freq.dtype))
