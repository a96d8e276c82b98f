"""``python -m toolkit`` with a record of what DeepSpeed's Ulysses attention did on this rank, for
``tests/test_ulysses_cpu.py``: started by ``accelerate launch ... -m tests.distributed.ulysses_probe train RECIPE``, it
counts the calls of ``UlyssesSPAttentionHF.forward`` and the all-to-alls (``torch.distributed.all_to_all_single``)
and the sequence lengths the attention received (this rank's slice) and returned to (the whole row, after the
all-to-all), and writes them to ``$ULYSSES_PROBE_OUT/rank<r>.json`` when the run ends.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch.distributed as dist
from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

from toolkit.cli import main

calls: Counter[str] = Counter()
local_lengths: Counter[int] = Counter()
attended_lengths: Counter[int] = Counter()

_forward = UlyssesSPAttentionHF.forward
_all_to_all_single = dist.all_to_all_single
_combine = UlyssesSPAttentionHF._combine_local_sequences


def _recorded_forward(self: UlyssesSPAttentionHF, module: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
    calls["attention"] += 1
    local_lengths[int(query.shape[2])] += 1  # HF layout [batch, heads, seq, head_dim]
    return _forward(self, module, query, *args, **kwargs)


def _recorded_combine(self: UlyssesSPAttentionHF, query: Any, key: Any, value: Any) -> Any:
    combined = _combine(self, query, key, value)
    attended_lengths[int(combined[0].shape[0])] += 1  # Ulysses layout [seq, batch, heads, head_dim]
    return combined


def _recorded_all_to_all_single(*args: Any, **kwargs: Any) -> Any:
    calls["all_to_all"] += 1
    return _all_to_all_single(*args, **kwargs)


UlyssesSPAttentionHF.forward = _recorded_forward
UlyssesSPAttentionHF._combine_local_sequences = _recorded_combine
dist.all_to_all_single = _recorded_all_to_all_single

code = main(sys.argv[1:])
record = {"calls": dict(calls), "local_lengths": dict(local_lengths), "attended_lengths": dict(attended_lengths)}
out = Path(os.environ["ULYSSES_PROBE_OUT"])
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))
sys.exit(code)
