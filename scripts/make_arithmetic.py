"""Write src/scalequest/data/arithmetic_train.jsonl and arithmetic_test.jsonl: one-step arithmetic word problems
with known answers (64 to train on, 100 held out).

The demo runs offline with nothing beside the clone, and public benchmark files are not copied into this
repository, so the demo's own data is generated here: questions to fine-tune the question generator on, easy
questions a 135M solver solves some of the time (difficulty labels with a spread, so the regressor and the reward
model have something to learn), and a held-out set that `evaluate` and `decontaminate` know as the `arithmetic`
benchmark. Deterministic: rerunning writes the same files.
"""

import json
import random
from pathlib import Path

TEMPLATES = [
    ("What is {a} + {b}?", lambda a, b: a + b),
    ("What is {a} minus {b}?", lambda a, b: a - b),
    ("What is {a} times {b}?", lambda a, b: a * b),
    ("Sam has {a} marbles and finds {b} more. How many marbles does Sam have now?", lambda a, b: a + b),
    ("A box holds {a} pens. {b} pens are taken out. How many pens are left in the box?", lambda a, b: a - b),
    ("There are {a} rows of chairs with {b} chairs in each row. How many chairs are there?", lambda a, b: a * b),
    (
        "Mia reads {a} pages on Monday and {b} pages on Tuesday. How many pages does she read in all?",
        lambda a, b: a + b,
    ),
    ("A baker makes {a} muffins and sells {b}. How many muffins are left?", lambda a, b: a - b),
]


def questions(count: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for number in range(count):
        template, answer = TEMPLATES[number % len(TEMPLATES)]
        a, b = rng.randint(2, 20), rng.randint(1, 9)
        a = max(a, b + 1)  # no negative answers
        rows.append(
            {"id": f"{prefix}-{number}", "question": template.format(a=a, b=b), "answer": f"#### {answer(a, b)}"}
        )
    return rows


def main() -> None:
    data = Path(__file__).resolve().parents[1] / "src" / "scalequest" / "data"
    train = questions(64, seed=0, prefix="arithmetic")
    seen = {row["question"] for row in train}
    # The held-out set leaves out every question the train set has, so evaluation never sees a training question.
    test = [row for row in questions(200, seed=1, prefix="arithmetic-test") if row["question"] not in seen][:100]
    for name, rows in (("arithmetic_train", train), ("arithmetic_test", test)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
