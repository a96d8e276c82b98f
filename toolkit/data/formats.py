"""One record to one :class:`Document`, by the source's ``format``.

``text``: ``bos + text + eos``, loss on every token. ``prompt_completion``: ``bos + prompt + completion + eos``,
loss on the completion and eos. ``chat``: the messages rendered with the chat template (the tokenizer's own or
the recipe's), loss on the assistant turns exactly as the template writes them (content and end-of-turn
marker): each assistant turn is the text between the conversation rendered up to it with the generation prompt
and rendered through it, and every part is tokenised on its own, as a model sees the prompt and then writes.
``arena``: a Chatbot Arena comparison laid out by :mod:`toolkit.data.arena_prompt` and cut to ``truncate_tokens``,
then its label token (A, B or tie), the one label. ``tokens``: the record's token ids as they are (no bos or eos
added), loss on every token. A record that cannot become a document raises :class:`BadRow`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from toolkit.data.arena import ArenaRow, BadArenaRow, arena_row
from toolkit.data.arena_prompt import NoRoom, arena_input, label_token_ids, swaps
from toolkit.data.packing import IGNORE_INDEX, Document
from toolkit.data.tokens import bos_prefix
from toolkit.errors import UserError
from toolkit.file_reading import read_text
from toolkit.recipe.data_spec import TRAIN_DATA, SourceSpec
from toolkit.recipe.schema import TrainSpec

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")


class BadRow(ValueError):
    """A record that cannot become a document; ``field`` is the spec field that names what is wrong, ``detail``
    what follows the record's location in the message."""

    def __init__(self, field: str, message: str, detail: str = ""):
        super().__init__(message)
        self.field, self.detail = field, detail

    def line(self, label: str, where: str) -> str:
        """The one line that names it: the field of ``label`` (the source's place in the recipe), what is wrong, and
        ``where`` the record is (``file:line``)."""
        return f"{label}.{self.field}: {self} in {where}{self.detail}"


def chat_template(spec: SourceSpec, tokenizer: Any, label: str) -> str | None:
    """The template a ``format: chat`` or ``arena`` source renders with (None for other formats, and for arena
    without one: its plain layout); a chat source without one is an error."""
    if spec.format not in ("chat", "arena"):
        return None
    if spec.chat_template is not None:
        return named_chat_template(spec, label)
    if spec.format == "arena":
        return getattr(tokenizer, "chat_template", None) or None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{label}.chat_template: the tokenizer has no chat template; name one (Jinja text or "
                        "a .jinja file) for format: chat")
    return str(tokenizer.chat_template)


def named_chat_template(spec: SourceSpec, label: str) -> str | None:
    """The template ``spec.chat_template`` names, read without a tokenizer (``validate`` checks it so): its Jinja
    text, or the text of its ``.jinja`` file (one that is not there: a UserError naming ``label``); None when it
    names none."""
    if spec.chat_template is None or not spec.chat_template.endswith(".jinja"):
        return spec.chat_template
    path = Path(os.path.expanduser(spec.chat_template))
    if not path.is_file():
        raise UserError(f"{label}.chat_template: no such file: {spec.chat_template}")
    return read_text(path)


FORMAT_FIELDS = {"text": ("text_field",), "tokens": ("ids_field",), "chat": ("messages_field",),
                 "prompt_completion": ("prompt_field", "completion_field"), "arena": ()}
"""The settings naming the fields a record of each format must hold (arena's columns are the competition's:
:func:`toolkit.data.arena.arena_row` names them): one entry for every ``SourceSpec.format``
(``tests/test_data_sources.py`` checks it), and the document functions read a record's fields through it
(:func:`_field`), so a field is checked up front exactly when a document reads it."""


def check_fields(record: Any, spec: SourceSpec) -> None:
    """A :class:`BadRow` unless ``record`` is a mapping holding the fields ``spec.format`` reads, each as its document
    reads it (:data:`_READERS`; no tokenizer needed: ``validate`` checks a local source's first record so, and every
    record is checked so before it is tokenized)."""
    if not isinstance(record, dict):
        raise BadRow("path", f"a record is {type(record).__name__}, not a mapping")
    _READERS[spec.format](record, spec)


def _field(record: dict[str, Any], spec: SourceSpec, key: str) -> Any:
    """The value of the record's field that the setting ``key`` of ``spec`` names, one of the settings
    :data:`FORMAT_FIELDS` lists for ``spec.format``."""
    assert key in FORMAT_FIELDS[spec.format], f"FORMAT_FIELDS[{spec.format!r}] lists the fields it reads, not {key}"
    name = getattr(spec, key)
    if name not in record:
        raise BadRow(key, f"no field {name!r}", f" (fields: {', '.join(record)})")
    return record[name]


def _string(record: dict[str, Any], spec: SourceSpec, key: str) -> str | None:
    value = _field(record, spec, key)
    name = getattr(spec, key)
    if value is not None and not isinstance(value, str):
        raise BadRow(key, f"{name!r} holds {type(value).__name__}, not text")
    return value


def _ends(tokenizer: Any) -> tuple[list[int], list[int]]:
    return bos_prefix(tokenizer), [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_document(record: dict[str, Any], spec: SourceSpec, tokenizer: Any) -> Document | None:
    """Every token but the first is a label; None for an empty text."""
    text = _string(record, spec, "text_field")
    if not text:
        return None
    bos, eos = _ends(tokenizer)
    input_ids = bos + _ids(tokenizer, text) + eos
    return Document(input_ids, [IGNORE_INDEX] + input_ids[1:])


def _token_ids(record: dict[str, Any], spec: SourceSpec) -> list[int]:
    ids = _field(record, spec, "ids_field")
    if not isinstance(ids, list) or not all(type(i) is int and i >= 0 for i in ids):
        raise BadRow("ids_field", f"{spec.ids_field!r} is not a list of token ids (integers from 0)")
    return ids


def tokens_document(record: dict[str, Any], spec: SourceSpec) -> Document | None:
    """Already tokenized: every id but the first is a label; None for an empty list."""
    ids = _token_ids(record, spec)
    if not ids:
        return None
    return Document(list(ids), [IGNORE_INDEX] + ids[1:])


def _prompt_completion(record: dict[str, Any], spec: SourceSpec) -> tuple[str, str]:
    prompt = _string(record, spec, "prompt_field") or ""
    completion = _string(record, spec, "completion_field")
    if not completion:
        raise BadRow("completion_field", f"empty {spec.completion_field!r}")
    return prompt, completion


def prompt_completion_document(record: dict[str, Any], spec: SourceSpec, tokenizer: Any) -> Document:
    prompt, completion = _prompt_completion(record, spec)
    bos, eos = _ends(tokenizer)
    context = bos + _ids(tokenizer, prompt)
    answer = _ids(tokenizer, completion) + eos
    return Document(context + answer, [IGNORE_INDEX] * len(context) + answer)


def _messages(record: dict[str, Any], spec: SourceSpec) -> list[dict[str, str]]:
    messages = _field(record, spec, "messages_field")
    if not isinstance(messages, list) or not messages:
        raise BadRow("messages_field", f"empty messages in {spec.messages_field!r}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BadRow("messages_field", f"message {i} is not a {{role, content}} mapping")
        if message["role"] not in ROLES:
            raise BadRow("messages_field", f"unknown role {message['role']!r} in message {i} "
                                           f"(roles: {', '.join(ROLES)})")
        if not isinstance(message["content"], str):
            raise BadRow("messages_field", f"message {i} has {type(message['content']).__name__} content, not text")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("messages_field", "no assistant message to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_document(record: dict[str, Any], spec: SourceSpec, tokenizer: Any, template: str,
                  label: str = TRAIN_DATA) -> Document:
    """The conversation as the template renders it; labels on the assistant turns only."""
    messages = _messages(record, spec)

    def render(turns: list[dict[str, str]], prompt: bool = False) -> str:
        try:
            return str(tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False,
                                                     add_generation_prompt=prompt))
        except jinja2.TemplateSyntaxError as exc:
            raise UserError(f"{label}.chat_template: line {exc.lineno} of the template: {exc.message}") from None
        except jinja2.TemplateError as exc:  # the template's raise_exception: this conversation, not every one
            raise BadRow("messages_field", f"the chat template refuses the conversation: {exc}") from None

    full = render(messages)
    cuts = [0]
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            before, through = render(messages[:i], prompt=True), render(messages[:i + 1])
            if not (through.startswith(before) and full.startswith(through) and len(before) >= cuts[-1]):
                raise UserError(f"{label}.chat_template: rendering a conversation's first turns does not "
                                "give the start of the whole conversation, so the assistant turns cannot be "
                                "located; use a template that renders past turns unchanged")
            cuts += [len(before), len(through)]
    cuts.append(len(full))
    input_ids: list[int] = []
    labels: list[int] = []
    for k in range(len(cuts) - 1):
        ids = _ids(tokenizer, full[cuts[k]:cuts[k + 1]])
        input_ids += ids
        labels += ids if k % 2 else [IGNORE_INDEX] * len(ids)
    return Document(input_ids, labels)


class Truncations:
    """Comparisons of arena sources read in this process and how many were cut to fit; logged when the count of
    cut ones doubles, so a run's log says how much the inputs lost."""

    def __init__(self) -> None:
        self.rows = self.cut_rows = self.cut_tokens = 0

    def add(self, cut: int, limit: int) -> None:
        self.rows += 1
        if cut:
            self.cut_rows += 1
            self.cut_tokens += cut
            if self.cut_rows & (self.cut_rows - 1) == 0:  # 1, 2, 4, 8, ...
                log.info("format arena: %d of %d comparisons read so far were cut to truncate_tokens %d "
                         "(%d tokens cut, %.0f per cut comparison)", self.cut_rows, self.rows, limit,
                         self.cut_tokens, self.cut_tokens / self.cut_rows)


TRUNCATIONS = Truncations()


def _arena_row(record: dict[str, Any], spec: SourceSpec) -> ArenaRow:
    try:
        return arena_row(record, "", labelled=True)
    except BadArenaRow as bad:
        raise BadRow("path", str(bad)) from None


def arena_document(record: dict[str, Any], spec: SourceSpec, tokenizer: Any, template: str | None) -> Document:
    """The comparison up to the answer position (no label), then the winner's label token (the one label)."""
    row = _arena_row(record, spec)
    if swaps(row, spec.swap):
        row = row.swapped()
    assert spec.truncate_tokens is not None and row.winner is not None  # the schema requires it; labelled=True
    try:
        given = arena_input(row, tokenizer, template, spec.truncate_tokens)
    except NoRoom as exc:  # this comparison's many turns: a bad row like any other
        raise BadRow("truncate_tokens", f"{exc.max_tokens} leaves no room for the comparison (its layout alone takes "
                                        f"{exc.layout} tokens)") from None
    TRUNCATIONS.add(given.cut, spec.truncate_tokens)
    answer = label_token_ids(tokenizer, spec.label_tokens)[row.winner]
    return Document(given.ids + [answer], [IGNORE_INDEX] * len(given.ids) + [answer])


_READERS: dict[str, Callable[[dict[str, Any], SourceSpec], object]] = {
    "text": lambda record, spec: _string(record, spec, "text_field"), "tokens": _token_ids, "chat": _messages,
    "prompt_completion": _prompt_completion, "arena": _arena_row}
"""What each format's document reads of a record before its tokenizer is needed, checked as it reads it."""


def to_document(record: Any, spec: SourceSpec, tokenizer: Any, template: str | None,
                label: str = TRAIN_DATA) -> Document | None:
    """``record`` (a mapping) as a document of ``spec.format``; None for an empty text or tokens record."""
    check_fields(record, spec)
    if spec.format == "chat":
        assert template is not None  # chat_template() gives one for format: chat, or raises
        return chat_document(record, spec, tokenizer, template, label)
    if spec.format == "prompt_completion":
        return prompt_completion_document(record, spec, tokenizer)
    if spec.format == "arena":
        return arena_document(record, spec, tokenizer, template)
    if spec.format == "tokens":
        return tokens_document(record, spec)
    return text_document(record, spec, tokenizer)


def trained_chat_template(train: TrainSpec, tokenizer: Any) -> str | None:
    """The chat template the model last trained on when a recipe named one (so ``final/`` answers in it); None
    when no stage names a template."""
    named = [(field, spec) for index in range(len(train.stages)) for field, spec in train.stage_sources(index)
             if spec.format in ("chat", "arena") and spec.chat_template is not None]
    return chat_template(named[-1][1], tokenizer, named[-1][0]) if named else None


def choice_token_ids(train: TrainSpec, tokenizer: Any) -> tuple[int, ...] | None:
    """The token ids an arena run's loss is restricted to (its ``label_tokens``); None for other runs."""
    labels = train.choice_tokens()
    if labels is None:
        return None
    field = train.stage_sources(0)[0][0]  # every source has these labels (the schema): the first one is named
    return label_token_ids(tokenizer, labels, f"{field}.label_tokens")
