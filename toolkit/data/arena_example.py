"""A small Chatbot Arena-format data set whose preferences follow signals a small model can learn, written as CSV
files in the competition's columns: ``python -m toolkit.data.arena_example data/arena-example`` (``--force``
replaces files already there, the pair together).

Each comparison is one of: a correct against a wrong sum (the correct one wins), an answer against a refusal (the
answer wins), or two equally good or equally bad responses (a tie: both correct, both refusals, both wrong). Which
side holds the better response is drawn at random, so the winners are balanced between A and B. The rows are a
pure function of the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from toolkit.data.arena import ArenaRow, write_arena
from toolkit.errors import UserError, command_parser, exit_on_user_error, seed_number
from toolkit.output_paths import atomic_files, check_writable

MODELS = ("model-north", "model-south", "model-east", "model-west")
REFUSALS = ("I'm sorry, but I can't help with that.", "I cannot answer that request.",
            "Sorry, I am not able to assist with this.")
FACTS = (("What is the capital of France?", "The capital of France is Paris."),
         ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
         ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
         ("How many days are in a week?", "A week has seven days."),
         ("What do bees make?", "Bees make honey."),
         ("What is the largest ocean?", "The Pacific is the largest ocean."),
         ("Which planet is known as the red planet?", "Mars is known as the red planet."),
         ("What gas do plants take in?", "Plants take in carbon dioxide."),
         ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
         ("How many legs does a spider have?", "A spider has eight legs."),
         ("What is the capital of Italy?", "The capital of Italy is Rome."),
         ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle."))
HELD_OUT_FACTS = 4
"""The last facts are asked in the held-out file only: its answer-against-refusal comparisons are new questions."""
SPLITS = {"train": 320, "test": 120}


def _sum(rng: random.Random) -> tuple[str, str, str]:
    """A sum question, a correct answer and a wrong one."""
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    wrong = a + b + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    phrase = rng.choice(["{a} + {b} = {c}.", "The answer is {c}.", "{a} plus {b} is {c}."])
    return f"What is {a} + {b}?", phrase.format(a=a, b=b, c=a + b), phrase.format(a=a, b=b, c=wrong)


def comparison(rng: random.Random, facts: tuple[tuple[str, str], ...]) -> tuple[str, str, str, int]:
    """(prompt, better or first response, worse or second response, winner if the first is shown as A)."""
    kind = rng.choice(["sum", "refusal", "tie", "tie"])
    if kind == "sum":
        return (*_sum(rng), 0)
    if kind == "refusal":
        prompt, answer = rng.choice(facts)
        return prompt, answer, rng.choice(REFUSALS), 0
    tie = rng.choice(["correct", "refusal", "wrong"])
    prompt, correct, wrong = _sum(rng)
    if tie == "refusal":
        return prompt, rng.choice(REFUSALS), rng.choice(REFUSALS), 2
    return prompt, correct if tie == "correct" else wrong, correct if tie == "correct" else wrong, 2


def _key(row: ArenaRow) -> tuple[tuple[str, ...], frozenset[tuple[str, ...]]]:
    """A comparison whichever side each response is shown on."""
    return row.prompt, frozenset((row.response_a, row.response_b))


def rows(count: int, seed: int, first_id: int, facts: tuple[tuple[str, str], ...] = FACTS[:-HELD_OUT_FACTS],
         seen: frozenset = frozenset()) -> list[ArenaRow]:
    """``count`` comparisons, none of them one in ``seen`` (keys of :func:`_key`); which side holds the better
    response is drawn at random."""
    rng = random.Random(seed)
    out: list[ArenaRow] = []
    while len(out) < count:
        prompt, first, second, winner = comparison(rng, facts)
        model_a, model_b = rng.sample(MODELS, 2)
        row = ArenaRow(str(first_id + len(out)), model_a, model_b, (prompt,), (first,), (second,), winner, "")
        row = row.swapped() if rng.random() < 0.5 else row
        if _key(row) not in seen:
            out.append(row)
    return out


def example_paths(folder: Path) -> dict[str, Path]:
    """Where :func:`write_example` writes each split: ``<folder>/<split>.csv``."""
    return {split: folder / f"{split}.csv" for split in SPLITS}


def write_example(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``train.csv`` and ``test.csv`` (held out, with winners: new questions beside the training file's, and
    none of its comparisons again) into ``folder``, the pair together: both are written to temporary files first,
    then renamed, so a failed write keeps the old pair; returns their paths."""
    train = rows(SPLITS["train"], seed * 100, 1000)
    test = rows(SPLITS["test"], seed * 100 + 1, 1000 + SPLITS["train"], FACTS, frozenset(map(_key, train)))
    paths = example_paths(folder)
    with atomic_files([paths["train"], paths["test"]]) as (train_tmp, test_tmp):
        write_arena(train, train_tmp)
        write_arena(test, test_tmp)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "toolkit.data.arena_example")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=seed_number, default=0)
    parser.add_argument("--force", action="store_true",
                        help="replace train.csv and test.csv where they exist (the pair together)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        check_writable(args.folder, "folder")
        taken = [path for path in example_paths(args.folder).values() if path.exists()]
        if taken and not args.force:
            raise UserError(f"{taken[0]}: exists already (--force replaces it)")
        for split, path in write_example(args.folder, args.seed).items():
            print(f"{split}: {path}")


if __name__ == "__main__":
    main()
