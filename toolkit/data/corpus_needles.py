"""Chat-form retrieval conversations for training an instruct model to find keys in long prompts.

Each record is ``{"messages": [user, assistant]}``: the user's turn is a haystack with one needle (passkey) or
``MULTIKEY`` needles (one asked, the rest distractors) at uniform depths, a share of them at the very start or
end, then the question; the assistant answers ``The pass key for <key> is <value>``. The prompt is built by
:func:`toolkit.data.needle.build_haystack` in the model's chat frame, exactly as the chat needle evaluations ask,
and decoded back to text, so a ``format: chat`` source renders it with the model's own template.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from toolkit.data.needle import ChatFrame, SentenceTokens, build_haystack, draw_depth, make_needles

NEEDLES_FILE = "needles-chat.jsonl"
RECORDS = 256
"""Half passkey, half multi-key: about 4M tokens, more than a demo run draws."""
MULTIKEY = 4
SHORTEST, LONGEST = 1024, 32000
"""Prompt lengths in tokens (template included), uniform; the longest leaves room for the answer in 32K."""
EDGE_SHARE = 0.1
"""Needles put at depth 0 or 1 (half each): :func:`toolkit.data.needle.draw_depth`'s ``edge_fraction``."""


def chat_needle(tokenizer, tokens: SentenceTokens, frame: ChatFrame, rng: random.Random,
                count: int, length: int) -> dict[str, object]:
    """One conversation of about ``length`` tokens with ``count`` needles."""
    needles = make_needles(rng, count)
    asked = rng.choice(needles)
    depths = [draw_depth(rng, EDGE_SHARE) for _ in needles]
    haystack = build_haystack(tokens, length, needles, depths, asked, rng, chat=frame)
    lead = len(frame.turn) + len(tokens(asked.lead))
    user = tokenizer.decode(haystack.input_ids[len(frame.head):-lead])
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": asked.lead + asked.answer}],
            "needles": count, "length": len(haystack.input_ids)}


def write_chat_needles(tokenizer, path: Path, records: int = RECORDS) -> str:
    """Write ``records`` conversations to ``path`` (the same ones every time); a line saying what it wrote."""
    rng = random.Random(0)
    tokens, frame = SentenceTokens(tokenizer), ChatFrame.of(tokenizer)
    total = 0
    with path.open("w", encoding="utf-8") as out:
        for i in range(records):
            row = chat_needle(tokenizer, tokens, frame, rng, 1 if i % 2 == 0 else MULTIKEY,
                              rng.randint(SHORTEST, LONGEST))
            total += int(row["length"])  # type: ignore[call-overload]
            out.write(json.dumps(row) + "\n")
    return f"{records} chat retrieval conversations (passkey, {MULTIKEY}-key), {total:,} tokens, {path.name}"
