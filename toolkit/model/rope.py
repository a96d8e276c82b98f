"""RoPE extension: derive a stage's ``config.rope_parameters`` and switch an in-memory model to it.

transformers 5 keeps RoPE in ``config.rope_parameters = {"rope_type", "rope_theta", <type keys>}`` and computes
the rotary inverse frequencies once, when the rotary embedding module is built. :func:`apply_rope` therefore
rewrites the config *and* rebuilds that module, so one model can move from stage to stage without a reload.
:func:`use_rope` is the entry point: a RopeSpec in, a :class:`RopeSwitch` out that can put the previous RoPE back.

Context length has three notions, all owned here: the model's native length (``LoadedModel.native_length``),
the context a setting covers (:func:`context_length`: never below native), and ``config.max_position_embeddings``
(the covered context, except for ``dynamic``: :attr:`RopeSetting.max_position_embeddings`).
See ``docs/rope.md`` for the methods and their keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, final

import torch
from torch import nn

from toolkit.errors import UserError
from toolkit.model.lora import CausalLM, unwrap_peft
from toolkit.model.rope_methods import METHODS, TYPE_KEYS
from toolkit.recipe.schema import RopeSpec, TrainSpec


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


def rebuild_rotary(model: nn.Module, config: Any, device: torch.device | None = None) -> None:
    """Replace every rotary embedding module of ``model`` by one built from ``config``, on ``device`` (default: the
    old module's) in the old buffers' dtype: their buffers are computed from the config, and no state dict holds
    them. A TypeError when ``model`` has none."""
    rotaries = [(name, module) for name, module in model.named_modules()
                if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq")]
    if not rotaries:
        raise TypeError(f"{type(model).__name__} has no rotary embedding module to rebuild")
    for name, old in rotaries:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fresh = type(old)(config=config)
        setattr(parent, child, fresh.to(device=device or old.inv_freq.device, dtype=old.inv_freq.dtype))


def rope_parameters(spec: RopeSpec, seq_len: int, config: Any, native_length: int,
                    base_theta: float | None = None) -> dict[str, Any]:
    """The complete ``config.rope_parameters`` for a stage of ``seq_len`` tokens.

    - ``rope_theta``: ``spec.theta``; for ``"auto"`` :func:`theta_for_length` from ``base_theta`` at
      ``native_length``; for ``None``, ``base_theta``. ``base_theta`` is the loaded model's theta
      (``LoadedModel.native_theta``), so stages never compound; it defaults to the config's current theta.
    - ``factor``: ``spec.factor``, else ``seq_len / original`` (at least 1), where ``original`` is
      ``spec.original_max_position_embeddings`` or ``native_length``.
    - ``original_max_position_embeddings`` for the methods that read it; the other type keys only when the spec
      gives them, else the method's defaults (llama3's ``low_freq_factor=1``, ``high_freq_factor=4``): see
      ``toolkit.model.rope_methods``.
    """
    base = base_theta if base_theta is not None else config.rope_parameters["rope_theta"]
    original = spec.original_length(native_length)
    if spec.theta == "auto":
        theta = theta_for_length(base, native_length, seq_len, rotary_dim(config))
    else:
        theta = spec.theta if spec.theta is not None else base
    params: dict[str, Any] = {"rope_type": spec.type, "rope_theta": float(theta)}
    if spec.type == "default":
        return params
    params["factor"] = float(spec.factor or max(1.0, seq_len / original))
    method = METHODS[spec.type]
    if method.uses_original:
        params["original_max_position_embeddings"] = int(original)
    params.update(method.defaults)
    params.update({key: getattr(spec, key) for key in TYPE_KEYS if getattr(spec, key) is not None})
    return params


def context_length(spec: RopeSpec, seq_len: int, native_length: int) -> int:
    """The context a setting for ``seq_len`` tokens covers: never less than the model's native length, and for
    a scaling type with an explicit factor (linear, yarn, llama3, longrope) the factor times the original length,
    even when the stage trains on fewer tokens."""
    scaled = spec.factor * spec.original_length(native_length) if spec.factor else 0
    return int(max(seq_len, native_length, scaled if METHODS[spec.type].scaled else 0))


@dataclass(frozen=True)
class RopeSetting:
    """A complete RoPE setting: ``config.rope_parameters`` and the ``config.max_position_embeddings`` it needs."""

    parameters: dict[str, Any]
    max_position_embeddings: int
    """The context length it covers (:func:`context_length`), but for ``dynamic`` the original length
    (``original_max_position_embeddings``, else the native length): transformers rescales that method's base as a
    sequence grows past ``max_position_embeddings``, continuously from there on, by ``factor``."""


def rope_setting(spec: RopeSpec, seq_len: int, config: Any, native_length: int,
                 base_theta: float | None = None) -> RopeSetting:
    """The setting of ``spec`` for ``seq_len`` tokens (see :func:`rope_parameters`), without applying it."""
    covered = context_length(spec, seq_len, native_length)
    original = spec.original_length(native_length)
    return RopeSetting(rope_parameters(spec, seq_len, config, native_length, base_theta),
                       original if spec.type == "dynamic" else covered)


def check_coverage(train: TrainSpec, native_length: int, config: Any) -> None:
    """Refuse, before training, a stage whose explicit ``rope.factor`` times the original length (the spec's, or
    the model's native length) falls short of its ``seq_len``, or whose longrope factors are not one per rotary
    frequency of the model's ``config``."""
    pairs = rotary_dim(config) // 2
    for index, stage in enumerate(train.stages):
        problem = stage.rope.shortfall(stage.seq_len, native_length)
        if problem:
            raise UserError(f"train.stages[{index}].rope.factor: {problem}")
        for field in ("short_factor", "long_factor"):
            values = getattr(stage.rope, field)
            if values is not None and len(values) != pairs:
                raise UserError(f"train.stages[{index}].rope.{field}: {len(values)} values; the model's rotary "
                                f"embedding has {pairs} frequencies (rotary dimension / 2)")


def apply_rope(model: CausalLM, params: dict[str, Any], max_position_embeddings: int) -> None:
    """Switch ``model`` (plain or peft-wrapped) to ``params`` with ``config.max_position_embeddings`` as given
    (:attr:`RopeSetting.max_position_embeddings`), in place: the config's RoPE fields are set and every rotary
    embedding module is rebuilt from them, on the device and dtype of the old one."""
    base = unwrap_peft(model)
    config = base.config
    config.rope_parameters = dict(params)
    config.max_position_embeddings = int(max_position_embeddings)
    config.standardize_rope_params()
    config.validate_rope()
    rebuild_rotary(base, config)


@final
@dataclass(frozen=True)
class RopeSwitch:
    """A RoPE setting applied to a model; :meth:`restore` (or leaving a ``with`` block) puts the previous one back,
    config fields exactly as they were."""

    model: CausalLM
    applied: RopeSetting
    previous: tuple[dict[str, Any], int]
    """The config's ``rope_parameters`` and ``max_position_embeddings`` before the switch."""

    def restore(self) -> None:
        apply_rope(self.model, *self.previous)

    def __enter__(self) -> RopeSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def use_rope(model: CausalLM, spec: RopeSpec, seq_len: int, native_length: int,
             base_theta: float | None = None) -> RopeSwitch:
    """Apply ``spec``'s RoPE for ``seq_len`` tokens (a stage's, or one setting of a comparison) to ``model``.

    ``native_length`` and ``base_theta`` are the loaded weights' (see :func:`rope_parameters`). On failure the
    model keeps its previous RoPE.
    """
    config = unwrap_peft(model).config
    previous = (dict(config.rope_parameters), int(config.max_position_embeddings))
    setting = rope_setting(spec, seq_len, config, native_length, base_theta)
    try:
        apply_rope(model, setting.parameters, setting.max_position_embeddings)
    except BaseException:
        apply_rope(model, *previous)
        raise
    return RopeSwitch(model, setting, previous)
