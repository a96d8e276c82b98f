"""Regenerate the local JSONL data of our lm-eval tasks (``evals/lm_eval_tasks/longctx``).

``python -m toolkit.evals.lmeval_data [FOLDER]``. Documents are text (lm-eval tokenises them with the
evaluated model's tokenizer): built-in filler sentences with several needles of ``toolkit.data.needle``
inserted at sentence boundaries, one of them asked, so the tasks match what the tiny model trains on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from toolkit.data.needle import filler_sentence, make_needles
from toolkit.errors import command_parser, exit_on_user_error
from toolkit.output_paths import check_writable, write_text

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "evals" / "lm_eval_tasks" / "longctx"
# file -> (filler sentences per document, documents per size, needles per document, seed)
DATASETS: dict[str, tuple[tuple[int, ...], int, int, int]] = {
    "passkey.jsonl": ((12, 40, 80), 10, 3, 1),
    "passkey_short.jsonl": ((10,), 40, 1, 2),
}


def passkey_document(rng: random.Random, sentences: int, num_needles: int) -> dict[str, object]:
    """Filler with ``num_needles`` needles at random sentence boundaries; the question asks one of them."""
    needles = make_needles(rng, num_needles)
    asked = rng.choice(needles)
    parts = [filler_sentence(rng) for _ in range(sentences)]
    for needle in needles:
        parts.insert(rng.randint(0, len(parts)), needle.sentence)
    depth = parts.index(asked.sentence) / max(1, len(parts) - 1)
    return {"context": "".join(parts) + asked.question, "answer": asked.value, "key": asked.key,
            "sentences": sentences, "depth": round(depth, 3)}


def write_datasets(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """Write every JSONL file of :data:`DATASETS` into ``folder``; deterministic (fixed seeds)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (sizes, per_size, num_needles, seed) in DATASETS.items():
        rng = random.Random(seed)
        rows = [passkey_document(rng, size, num_needles) for size in sizes for _ in range(per_size)]
        written.append(write_text(folder / name, "".join(json.dumps(row) + "\n" for row in rows)))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "toolkit.evals.lmeval_data")
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER,
                        help="where to write the files (default: the tasks' own folder)")
    folder = parser.parse_args(argv).folder
    with exit_on_user_error():
        check_writable(folder, "folder")
        for path in write_datasets(folder):
            print(path)


if __name__ == "__main__":
    main()
