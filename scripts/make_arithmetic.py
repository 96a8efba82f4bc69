"""Write src/scalequest/data/arithmetic_train.jsonl: 64 one-step arithmetic questions with known answers.

The demo labels difficulty with a 135M solver, which fails almost every GSM8K question; these easy questions,
labelled beside a few GSM8K ones, give fail rates with a spread (some solved, some not), so the regressor and the
reward model have something to learn. Deterministic: rerunning writes the same file.
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


def main() -> None:
    rng = random.Random(0)
    rows = []
    for number in range(64):
        template, answer = TEMPLATES[number % len(TEMPLATES)]
        a, b = rng.randint(2, 20), rng.randint(1, 9)
        a = max(a, b + 1)  # no negative answers
        rows.append(
            {"id": f"arithmetic-{number}", "question": template.format(a=a, b=b), "answer": f"#### {answer(a, b)}"}
        )
    path = Path(__file__).resolve().parents[1] / "src" / "scalequest" / "data" / "arithmetic_train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
