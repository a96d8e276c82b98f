"""A recipe's training data: one source of documents (:class:`SourceSpec`), a weighted mixture of them, and a
stage's data with its packing (:class:`DataSpec`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from toolkit.recipe.strict import FieldError, Strict, changed

ARENA_LABELS = ("A", "B", "tie")
"""The default answer tokens of ``format: arena`` for A preferred, B preferred and a tie."""
ARENA_FIELDS = ("label_tokens", "swap", "truncate_tokens")
"""The source fields that apply to ``format: arena`` alone."""
TRAIN_DATA = "train.data"
"""The recipe field of the data every stage shares: what errors about data name unless told another field."""
SYNTHETIC_FIELDS = ("task", "num_keys", "loss_on", "min_length_fraction", "edge_depth_fraction")
"""The source fields that apply to ``source: synthetic`` alone (every other one but ``source`` to files and hub)."""


class Upsample(Strict):
    """Per-source length upsampling: long documents drawn more often than the rest of their source."""

    min_tokens: PositiveInt
    """Documents of at least this many tokens count as long."""
    factor: float = Field(gt=1.0)
    """Long documents are drawn ``factor`` times as often, relative to shorter ones, as the source holds them
    (each shorter document is kept with probability 1 / factor). The source's mixture weight is unchanged."""


class SourceSpec(Strict):
    """One source of training documents: where its records are and how each becomes a document."""

    source: Literal["synthetic", "jsonl", "csv", "parquet", "text", "hub"] = "synthetic"
    path: str | None = None
    """File or folder (jsonl/csv/parquet/text; relative to the recipe) or dataset name (hub)."""
    hub_config: str | None = None
    split: str = "train"
    format: Literal["text", "chat", "prompt_completion", "arena", "tokens"] = "text"
    """``text``: loss on every token. ``chat``: a list of ``{role, content}`` messages rendered with the chat
    template, loss on the assistant turns. ``prompt_completion``: prompt then completion, loss on the completion.
    ``arena``: a Chatbot Arena comparison (prompt, two models' responses, winner; docs/preference.md), loss on the
    one answer token, a softmax over ``label_tokens`` alone. ``tokens``: already tokenized, a list of token ids
    (below the model's vocabulary size) taken as they are, no bos or eos added; loss on every token."""
    text_field: str = "text"
    ids_field: str = "input_ids"
    """``format: tokens``: the record field holding the token ids."""
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    chat_template: str | None = None
    """``format: chat``: a Jinja template, or a ``.jinja`` file (relative to the recipe), used instead of the
    tokenizer's own; required when the tokenizer has none. ``format: arena`` lays its question out in it (the
    tokenizer's own by default; a plain layout when there is none)."""
    label_tokens: tuple[str, str, str] = ARENA_LABELS
    """``format: arena``: the answers for A preferred, B preferred and a tie, each one token of the tokenizer; the
    training loss is the cross-entropy over these three tokens' logits at the answer position."""
    swap: Literal["none", "all", "half"] = "none"
    """``format: arena``: exchange responses A and B (and the winner) in every row, or in a fixed half of the rows
    (chosen by the row's id), so the model cannot learn which position wins. List a file twice in a mixture,
    ``swap: none`` and ``swap: all``, to train on both orders."""
    truncate_tokens: PositiveInt | None = None
    """``format: arena`` (required, at most the stage's seq_len): the most tokens of one comparison with its answer;
    longer ones keep the head and the tail of every prompt and response turn within per-part budgets."""
    shuffle: bool = True
    """Read the records in a seeded shuffled order (reshuffled every epoch); false: in file order (files in name
    order), every epoch alike, for data shuffled beforehand or whose order matters."""
    bad_rows: Literal["error", "skip"] = "error"
    """A record that cannot become a document (unknown role, empty messages, missing field): stop naming its file
    and line, or skip it and count it in ``metrics.jsonl``."""
    min_tokens: PositiveInt | None = None
    """Drop documents shorter than this many tokens."""
    max_tokens: PositiveInt | None = None
    """Drop documents longer than this many tokens."""
    upsample: Upsample | None = None
    task: Literal["passkey", "multikey"] = "passkey"
    """Synthetic task: a single passkey, or several keys with distractors where one is asked for."""
    num_keys: PositiveInt = 4
    """multikey: keys hidden in each document (one asked for, the rest distractors)."""
    loss_on: Literal["all", "answer"] = "answer"
    """Synthetic data: train on every token, or only on the answer."""
    min_length_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Synthetic data: documents range from this fraction of seq_len up to seq_len."""
    edge_depth_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Synthetic data: share of needles put at the very start or the very end of the haystack (half each), the
    rest at uniform depths. Uniform depths seldom reach the edges (the farthest and the nearest retrieval), which
    needle grids test at depths 0 and 1."""

    @model_validator(mode="after")
    def _fits_source(self) -> SourceSpec:
        self._check_source_fields()
        return self

    def _check_source_fields(self) -> None:
        """Every field set applies to the source: a ``path`` without ``source:`` would read synthetic needles."""
        for key in SourceSpec.model_fields:
            if key in SYNTHETIC_FIELDS and self.source != "synthetic" and changed(self, key):
                raise FieldError(key, f"applies to source: synthetic, not {self.source}")
            if key not in (*SYNTHETIC_FIELDS, "source") and self.source == "synthetic" and changed(self, key):
                raise FieldError(key, "applies to file and hub sources, not synthetic (name one with source:)")
        if self.source == "synthetic":
            return
        if not self.path:
            raise FieldError("path", f"source {self.source!r} needs a path")
        if self.source == "text" and self.format != "text":
            raise FieldError("format", "a text source holds plain text; chat, prompt_completion and tokens need "
                                       "records (jsonl, parquet or hub)")
        if self.chat_template is not None and self.format not in ("chat", "arena"):
            raise FieldError("chat_template", "applies to format: chat or arena")
        if self.format != "arena":
            for key in ARENA_FIELDS:
                if changed(self, key):
                    raise FieldError(key, "applies to format: arena")
        elif self.truncate_tokens is None:
            raise FieldError("truncate_tokens", "format: arena needs truncate_tokens (at most the stage's seq_len)")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise FieldError("max_tokens", f"{self.max_tokens} is less than min_tokens {self.min_tokens}")

    @property
    def label(self) -> str:
        """How metrics and the report name this source: its path, or ``synthetic-<task>``."""
        return self.path or f"synthetic-{self.task}"


class MixtureSource(SourceSpec):
    """A source inside a mixture, with its share of the stage's tokens."""

    weight: PositiveFloat
    """Share of the stage's tokens drawn from this source (weights are normalised to sum to 1)."""
    name: str | None = None
    """Its name in ``metrics.jsonl`` and the report; defaults to its path (or ``synthetic-<task>``)."""

    @property
    def label(self) -> str:
        return self.name or super().label


class DataSpec(SourceSpec):
    """A stage's training data, one source (the source fields here) or a weighted ``mixture``, and how its
    documents are laid into rows of the stage length."""

    packing: Literal["pack", "split", "pad"] = "pack"
    """Long text: pack documents to seq_len with per-document position ids, split one per row, or pad."""
    mixture: list[MixtureSource] | None = Field(None, min_length=1)
    """Several sources, each with its weight: the stage draws each source's share of tokens, interleaved
    deterministically (see ``toolkit.data.mixture``). The source fields then go inside each entry."""

    def _check_source_fields(self) -> None:
        """A block with a mixture sets no source field itself; its entries are checked as sources."""
        if self.mixture is None:
            super()._check_source_fields()
            return
        for key in sorted(SourceSpec.model_fields):
            if changed(self, key):
                raise FieldError(key, "set it inside each mixture entry (this data block has a mixture)")
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.mixture):
            if entry.label in seen:
                raise FieldError(f"mixture[{i}].name", f"{entry.label!r} names mixture[{seen[entry.label]}] too; "
                                                       "give each source its own name")
            seen[entry.label] = i

    def source_field(self, field: str, index: int) -> str:
        """Where source ``index`` of :meth:`sources` is in the recipe, this block being at ``field``: ``field`` itself,
        or ``<field>.mixture[<index>]`` in a mixture."""
        return field if self.mixture is None else f"{field}.mixture[{index}]"

    def sources(self) -> list[tuple[str, float, SourceSpec]]:
        """``(name, weight, spec)`` of every source, weights summing to 1: the mixture's, or this block alone."""
        if self.mixture is None:
            return [(self.label, 1.0, self)]
        total = sum(entry.weight for entry in self.mixture)
        return [(entry.label, entry.weight / total, entry) for entry in self.mixture]
