"""Chat and prompt_completion records: labels on exactly the assistant turns / the completion, packed chat
documents isolated, and bad rows stopping with file:line (or skipped and counted)."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.micro_models import micro_config
from tests.runs import metrics, train
from toolkit.data.batches import stage_batches
from toolkit.data.formats import chat_document, chat_template, prompt_completion_document
from toolkit.data.packing import IGNORE_INDEX, pack_rows
from toolkit.data.sources import text_documents
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.loading import load_recipe
from toolkit.recipe.schema import TokenizerTraining
from toolkit.recipe.yaml_files import validate_as

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CONVERSATION = [
    {"role": "system", "content": "You answer with the passkey."},
    {"role": "user", "content": "The passkey of the old river is 4821. What is it?"},
    {"role": "assistant", "content": "The passkey is 4821."},
    {"role": "user", "content": "And the quiet garden?"},
    {"role": "assistant", "content": "I was not told that one."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0)


def _chat_spec(path: Path | str = "chat.jsonl", **fields) -> DataSpec:
    return DataSpec(**{"source": "jsonl", "path": str(path), "format": "chat", "chat_template": TEMPLATE, **fields})


def _spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The runs of consecutive labelled positions, as token ids."""
    spans: list[list[int]] = []
    for t, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        assert label == ids[t]
        if t == 0 or labels[t - 1] == IGNORE_INDEX:
            spans.append([])
        spans[-1].append(label)
    return spans


def test_chat_labels_are_exactly_the_assistant_turns(tokenizer):
    doc = chat_document({"messages": CONVERSATION}, _chat_spec(), tokenizer, TEMPLATE)
    rendered = tokenizer.apply_chat_template(CONVERSATION, chat_template=TEMPLATE, tokenize=False)
    assert tokenizer.decode(doc.input_ids) == rendered
    spans = [tokenizer.decode(span) for span in _spans(doc.input_ids, doc.labels)]
    eos = tokenizer.eos_token
    assert spans == ["The passkey is 4821." + eos, "I was not told that one." + eos]
    assert doc.input_ids[0] == tokenizer.bos_token_id


def test_prompt_completion_trains_on_the_completion_only(tokenizer):
    spec = DataSpec(source="jsonl", path="pc.jsonl", format="prompt_completion")
    doc = prompt_completion_document({"prompt": "Passkey 31. Say it: ", "completion": "31"}, spec, tokenizer)
    assert tokenizer.decode(doc.input_ids) == tokenizer.bos_token + "Passkey 31. Say it: 31" + tokenizer.eos_token
    assert [tokenizer.decode(s) for s in _spans(doc.input_ids, doc.labels)] == ["31" + tokenizer.eos_token]


def test_packed_chat_documents_are_isolated(tokenizer):
    conversations = [CONVERSATION[:3], CONVERSATION[1:3], [CONVERSATION[3], CONVERSATION[4]]]
    docs = [chat_document({"messages": c}, _chat_spec(), tokenizer, TEMPLATE) for c in conversations]
    seq_len = sum(len(d.input_ids) for d in docs) + 5
    rows = list(pack_rows(docs, seq_len, "pack", tokenizer.pad_token_id))
    assert len(rows) == 1
    torch.manual_seed(0)
    model = LlamaForCausalLM(micro_config(vocab_size=len(tokenizer), max_position_embeddings=seq_len)).eval()
    model.set_attn_implementation("sdpa")
    row = {key: torch.tensor([value]) for key, value in rows[0].items()}
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], attention_mask=None,
                       use_cache=False).logits[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=torch.tensor([doc.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(doc.input_ids)], alone, atol=1e-5, rtol=1e-5)
            assert rows[0]["labels"][start + 1:start + len(doc.input_ids)] == doc.labels[1:]
            start += len(doc.input_ids)


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"messages": CONVERSATION[1:3]}


@pytest.mark.parametrize(("bad", "message"), [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]},
     r"^train\.data\.messages_field: unknown role 'robot' in message 1 \(roles: system, user, assistant, tool\) "
     r"in .*chat\.jsonl:3$"),
    ({"messages": []}, r"^train\.data\.messages_field: empty messages in 'messages' in .*chat\.jsonl:3$"),
    ({"conversation": CONVERSATION}, r"^train\.data\.messages_field: no field 'messages' in .*chat\.jsonl:3 "
                                     r"\(fields: conversation\)$"),
    ({"messages": [{"role": "user", "content": "hi"}]},
     r"^train\.data\.messages_field: no assistant message to train on in .*chat\.jsonl:3$"),
])
def test_bad_chat_rows_stop_naming_file_and_line(tokenizer, tmp_path, bad, message):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n")  # the blank line 2 still counts
    with pytest.raises(UserError, match=message):
        list(islice(text_documents(_chat_spec(path), tokenizer, seed=0), 4))


def test_bad_prompt_completion_row(tokenizer, tmp_path):
    path = _write(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}])
    spec = DataSpec(source="jsonl", path=str(path), format="prompt_completion")
    with pytest.raises(UserError, match=r"^train\.data\.completion_field: no field 'completion' in .*pc\.jsonl:2 "
                                        r"\(fields: prompt\)$"):
        list(islice(text_documents(spec, tokenizer, seed=0), 4))


def test_bad_rows_skipped_and_counted_when_asked(tokenizer, tmp_path):
    bad = {"messages": [{"role": "robot", "content": "beep"}]}
    path = _write(tmp_path / "chat.jsonl", [GOOD, bad, GOOD, {"messages": []}, GOOD])
    batches = stage_batches(_chat_spec(path, bad_rows="skip"), tokenizer, seq_len=64, batch_size=8, seed=0)
    next(batches)
    epochs, remainder = divmod(batches.rows.skipped[0], 2)  # two bad records per pass over the file
    assert epochs >= 1 and remainder in (0, 1)
    assert batches.logged()["source_skipped_rows"] == {str(path): batches.rows.skipped[0]}


STRICT = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations start with the user') }}{% endif %}"


def test_a_conversation_the_template_refuses_is_a_bad_row(tokenizer, tmp_path):
    """A template's ``raise_exception`` is about one conversation: stop naming its line, or skip and count it."""
    path = _write(tmp_path / "chat.jsonl", [GOOD, {"messages": CONVERSATION}, GOOD])  # the 2nd starts with system
    with pytest.raises(UserError, match=r"^train\.data\.messages_field: the chat template refuses the conversation: "
                                        r"Conversations start with the user in .*chat\.jsonl:2$"):
        list(islice(text_documents(_chat_spec(path, chat_template=STRICT + TEMPLATE), tokenizer, seed=0), 3))
    spec = _chat_spec(path, chat_template=STRICT + TEMPLATE, bad_rows="skip", shuffle=False)
    batches = stage_batches(spec, tokenizer, seq_len=64, batch_size=4, seed=0)
    next(batches)
    assert batches.rows.skipped[0] >= 1
    # a template that refuses every conversation: the skips leave nothing, and the error says why
    only = _write(tmp_path / "system-first.jsonl", [{"messages": CONVERSATION}] * 2)
    with pytest.raises(UserError, match=r"^train\.data\.path: no chat documents in .*system-first\.jsonl; 2 "
                                        r"record\(s\) skipped as bad, the last: train\.data\.messages_field: the chat "
                                        r"template refuses the conversation: Conversations start with the user in "
                                        r".*system-first\.jsonl:\d$"):
        next(text_documents(_chat_spec(only, chat_template=STRICT + TEMPLATE, bad_rows="skip"), tokenizer, seed=0))


def test_a_template_that_is_no_jinja_is_one_line_naming_the_field(tokenizer, tmp_path):
    path = _write(tmp_path / "chat.jsonl", [GOOD])
    with pytest.raises(UserError, match=r"^train\.data\.chat_template: line 1 of the template: Unexpected end"):
        next(text_documents(_chat_spec(path, chat_template="{% for m in messages %}{{ m['content'] }}}"), tokenizer,
                            seed=0))


def test_no_chat_template_is_an_error(tokenizer, tmp_path):
    spec = DataSpec(source="jsonl", path=str(_write(tmp_path / "chat.jsonl", [GOOD])), format="chat")
    with pytest.raises(UserError, match=r"^train\.data\.chat_template: the tokenizer has no chat template"):
        next(text_documents(spec, tokenizer, seed=0))


def _chat_recipe(tmp_path: Path, **data) -> Path:
    chat = _write(tmp_path / "chat.jsonl", [GOOD, {"messages": CONVERSATION}] * 4)
    recipe = dict(MICRO_RECIPE, output={"dir": str(tmp_path / "run")})
    recipe["train"] = dict(MICRO_RECIPE["train"], stages=[
        {"name": "sft", "seq_len": 128, "max_steps": 3, "lr": 1e-3, "batch_size": 2,
         "data": {"source": "jsonl", "path": chat.name, "format": "chat", **data}}])
    return write_recipe(tmp_path, recipe)


def test_chat_stage_trains_and_needs_a_template(tmp_path, capsys):
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    assert train(_chat_recipe(tmp_path), "train.max_steps=1") == 2  # the tiny tokenizer has no template
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err == ["error: train.stages[0].data.chat_template: the tokenizer has no chat template; name one "
                   "(Jinja text or a .jinja file) for format: chat"]
    assert train(_chat_recipe(tmp_path, chat_template="chat.jinja")) == 0
    rows = metrics(tmp_path / "run")
    assert len(rows) == 3 and all(row["loss"] > 0 for row in rows)
    assert rows[-1]["source_tokens"][str(tmp_path / "chat.jsonl")] > 0
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert saved.chat_template == TEMPLATE  # final/ answers in the template it was trained on


def test_schema_keeps_chat_fields_where_they_apply():
    cases = [({"source": "jsonl", "path": "a.jsonl", "chat_template": TEMPLATE},
              "chat_template: applies to format: chat"),
             ({"source": "text", "path": "books", "format": "chat"}, "format: a text source holds plain text"),
             ({"format": "chat"}, "format: applies to file and hub sources, not synthetic")]
    for data, message in cases:
        with pytest.raises(UserError, match=f"^r.yaml: {message}"):
            validate_as(DataSpec, data, "r.yaml")


def test_shipped_llama3_template_locates_the_assistant_turns(tokenizer):
    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-prolong-512k.yaml")
    sft = recipe.train.stage_data(2)
    assert sft.format == "chat" and sft.chat_template and Path(sft.chat_template).is_file()
    template = chat_template(sft, tokenizer, "train.stages[2].data")
    assert template is not None
    doc = chat_document({"messages": CONVERSATION}, sft, tokenizer, template)
    spans = [tokenizer.decode(span) for span in _spans(doc.input_ids, doc.labels)]
    assert spans == ["The passkey is 4821.<|eot_id|>", "I was not told that one.<|eot_id|>"]
