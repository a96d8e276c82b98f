"""The RoPE methods this toolkit offers, in one table that the schema, ``toolkit.model.rope`` and the GGUF exporter
read.

Each method is named as transformers 5 names its ``rope_parameters["rope_type"]``; see docs/rope.md for what they do.
Adding a method is a row here (plus whatever transformers or llama.cpp need to compute it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RopeMethod:
    """What the toolkit needs to know of one RoPE method."""

    keys: frozenset[str] = frozenset()
    """Type-specific keys a recipe may set (beside ``theta`` and ``original_max_position_embeddings``)."""
    scaled: bool = False
    """``factor`` stretches the original context to ``factor x original`` (``dynamic`` rescales on the fly)."""
    uses_original: bool = False
    """transformers reads ``original_max_position_embeddings`` for it."""
    required: tuple[str, ...] = ()
    """Keys a recipe must give."""
    defaults: dict[str, float] = field(default_factory=dict)
    """Values written into ``rope_parameters`` when the recipe leaves them out."""
    gguf: bool = False
    """llama.cpp's Llama computes it as transformers does (``toolkit.export.to_gguf``)."""


METHODS: dict[str, RopeMethod] = {
    "default": RopeMethod(gguf=True),
    "linear": RopeMethod(frozenset({"factor"}), scaled=True, gguf=True),
    "dynamic": RopeMethod(frozenset({"factor"})),
    "yarn": RopeMethod(frozenset({"factor", "beta_fast", "beta_slow", "attention_factor"}), scaled=True,
                       uses_original=True, gguf=True),
    "llama3": RopeMethod(frozenset({"factor", "low_freq_factor", "high_freq_factor"}), scaled=True, uses_original=True,
                         defaults={"low_freq_factor": 1.0, "high_freq_factor": 4.0}, gguf=True),  # Llama 3.1's values
    "longrope": RopeMethod(frozenset({"factor", "attention_factor", "short_factor", "long_factor"}), scaled=True,
                           uses_original=True, required=("short_factor", "long_factor")),
}

TYPE_KEYS: tuple[str, ...] = tuple(sorted(set().union(*(method.keys for method in METHODS.values())) - {"factor"}))
"""Every type-specific key but ``factor``, which every scaling method takes."""

GGUF_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.gguf)


def native_length_of(config: Any) -> int:
    """The context length the weights were trained for: YaRN, llama3 and longrope record it; linear scaling covers
    ``factor`` times it in ``max_position_embeddings`` (as a linear stage writes it)."""
    rope = config.rope_parameters or {}
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    if rope.get("rope_type") == "linear" and rope.get("factor"):
        return round(config.max_position_embeddings / rope["factor"])
    return int(config.max_position_embeddings)
