"""A judge that is a local transformers model, loaded once: greedy verdicts in its chat template when it has one; with
``choose``, the verdict whose first token its logits rank highest instead of generating."""

from __future__ import annotations

import time

import torch
from transformers import AutoConfig

from toolkit.data.tokenizer import pretrained_tokenizer
from toolkit.data.tokens import pad_id
from toolkit.errors import UserError, reason
from toolkit.evals.batching import batched
from toolkit.evals.judge_protocol import Reply
from toolkit.evals.jury_spec import JudgeSpec
from toolkit.evals.scoring import generate_ids, model_device
from toolkit.model.loading import load_for_eval
from toolkit.model.sources import check_model_source


class LocalJudge:
    """A folder or hub id (a LoRA run's ``final/`` is merged), loaded on ``device``."""

    def __init__(self, spec: JudgeSpec, device: torch.device):
        self.spec = spec
        try:
            self.model, self.tokenizer, _ = load_for_eval(spec.model, None, device, spec.precision)
        except (UserError, OSError, ValueError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"judge {spec.name}: model: cannot load {spec.model} ({why})") from None
        self.pad_id = pad_id(self.tokenizer)

    def _encode(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                        add_generation_prompt=True)
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt + "\nVerdict:")["input_ids"]

    def ask(self, prompts: list[str], verdicts: tuple[str, ...] = ()) -> list[Reply]:
        if self.spec.choose and verdicts:
            return self._choose([self._encode(p) for p in prompts], verdicts)
        replies: list[Reply] = []
        for chunk in batched([self._encode(p) for p in prompts], self.spec.batch_size):
            start = time.monotonic()
            rows = generate_ids(self.model, chunk, self.spec.max_tokens, self.pad_id, self.tokenizer.eos_token_id)
            seconds = (time.monotonic() - start) / len(chunk)
            replies += [Reply(self.tokenizer.decode(row, skip_special_tokens=True), None, 1, len(ids), len(row),
                              seconds) for ids, row in zip(chunk, rows, strict=True)]
        return replies

    def _first_tokens(self, verdicts: tuple[str, ...]) -> list[int]:
        """Each verdict's first token as the judge would write it next: as it is in the chat template's answer
        turn; after a plain prompt's "Verdict:" with its space, unless the tokenizer makes the space a token of its
        own (then the verdicts' own first tokens)."""
        leads = ("",) if getattr(self.tokenizer, "chat_template", None) else (" ", "")
        for lead in leads:
            firsts = [self.tokenizer(lead + verdict, add_special_tokens=False)["input_ids"][0] for verdict in verdicts]
            if len(set(firsts)) == len(firsts):
                return firsts
        raise UserError(f"judge {self.spec.name}: choose: the verdicts {verdicts} share a first token")

    @torch.inference_mode()
    def _choose(self, encoded: list[list[int]], verdicts: tuple[str, ...]) -> list[Reply]:
        """The verdict whose first token has the highest logit after each prompt (rows right-padded without a
        mask: causal attention never sees the pads after a row; only the rows' last positions are computed)."""
        firsts = self._first_tokens(verdicts)
        device, replies = model_device(self.model), []
        for chunk in batched(encoded, self.spec.batch_size):
            start = time.monotonic()
            ids = torch.full((len(chunk), max(map(len, chunk))), self.pad_id, dtype=torch.long)
            for r, row in enumerate(chunk):
                ids[r, :len(row)] = torch.tensor(row)
            keep = sorted({len(row) - 1 for row in chunk})
            logits = self.model(input_ids=ids.to(device), logits_to_keep=torch.tensor(keep, device=device),
                                use_cache=False).logits
            at = torch.tensor([keep.index(len(row) - 1) for row in chunk], device=device)
            picks = logits[torch.arange(len(chunk), device=device), at][:, firsts].argmax(-1).tolist()
            seconds = (time.monotonic() - start) / len(chunk)
            replies += [Reply(verdicts[pick], None, 1, len(row), 1, seconds) for row, pick in zip(chunk, picks,
                                                                                                  strict=True)]
        return replies


def check_local_judge(spec: JudgeSpec) -> None:
    """A local judge's model is found, its config loads, and its tokenizer loads with a pad or an eos token."""
    field = f"judge {spec.name}: model"
    check_model_source(spec.model, field)
    try:
        AutoConfig.from_pretrained(spec.model)
    except (OSError, ValueError) as exc:
        raise UserError(f"{field}: cannot load {spec.model!r}: {reason(exc)}") from None
    pretrained_tokenizer(spec.model, field, lambda exc: UserError(
        f"{field}: cannot load the tokenizer of {spec.model!r}: {reason(exc)}"))
