"""Write src/scalequest/data/code_tasks_train.jsonl: Python programming tasks with reference solutions and tests.

The offline question source for the code domain, as `arithmetic_train.jsonl` is for the math demo. Each row is a
task a user might ask ("write a function that ..."), with its exact signature and two examples as asserts, so it
serves (1) as question-fine-tuning data that teaches a model to ask programming questions and (2) as a task with
known tests on which a solver's sampled programs are graded (other code runs the rows' `tests` in a sandbox).

Row: {"id": "code-task-0000", "question": str, "entry_point": str, "tests": [str, ...], "solution": str}
- `question`: the task, its signature `def NAME(ARGS) -> TYPE:`, input, output, an edge case, and two examples as
  assert lines in a ```python block; never the solution.
- `tests`: 4 to 6 one-line asserts, the two examples first, then hidden ones (an edge case among them).
- `solution`: the reference implementation. The expected values in the tests are computed here by running it, so
  this script executes its own reference code (written below by us), never model-written code.

The tasks come from the task families below, each varying the function name and the constants in the statement
(thresholds, widths, bases, characters, shifts, ...). The families and their wording are written for this project,
not taken from HumanEval, MBPP or any other benchmark. Stdlib only. Deterministic: each family draws from its own
`random.Random` seeded with SEED and the family's name, so rerunning writes the same bytes.

Usage: python scripts/make_code_tasks.py [--output PATH]   (default: the bundled data file)

License: our own work, Apache-2.0, the same license as the project (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path

SEED = 0
ROWS_PER_FAMILY = 8
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src" / "scalequest" / "data" / "code_tasks_train.jsonl"

OPENINGS = [
    "Write a Python function",
    "Implement a Python function",
    "I need a Python function",
    "Please write a Python function",
    "Create a Python function",
]
SIGNATURE_LINES = [
    "Use exactly this signature: `{signature}`",
    "Signature: `{signature}`",
    "The function must be defined as `{signature}`",
]

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "lamp", "orbit", "maple", "quiet", "zebra", "ocean", "pixel",
    "honey", "garden", "rocket", "violet", "banana", "echo", "kettle", "summit", "window", "yellow", "anchor",
    "puzzle", "island", "meadow", "silver", "thunder", "cactus", "breeze", "lantern", "marble", "nectar", "velvet",
    "walnut", "sky", "ink", "fox", "owl", "bee",
]  # fmt: skip
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Task:
    """One task before it is rendered: the statement's parts, the reference body and the test arguments."""

    name: str
    params: str  # "values: list[int]"
    returns: str  # "list[int]"
    summary: str  # follows "... function `name` that"
    inputs: str
    output: str
    edge: str
    body: str  # the reference function's body, not indented
    examples: list[tuple]  # argument tuples shown in the question
    hidden: list[tuple]  # further argument tuples, only in the tests (an edge case among them)
    notes: tuple[str, ...] = ()


def code(text: str, **values: object) -> str:
    """Dedent a function body and put each value in for its `<NAME>` placeholder (str(value): pass repr for text)."""
    text = textwrap.dedent(text).strip("\n")
    for key, value in values.items():
        text = text.replace(f"<{key}>", str(value))
    return text


def ints(rng: random.Random, size: int, lo: int = -9, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(size)]


def sentence(rng: random.Random, count: int, mixed_case: bool = False) -> str:
    words = [rng.choice(WORDS) for _ in range(count)]
    if mixed_case:
        words = [word.capitalize() if rng.random() < 0.4 else word for word in words]
    return " ".join(words)


def noisy(rng: random.Random, core: str, marks: str = " ,.!?-'") -> str:
    """`core` with random capitals and punctuation or spaces between its characters."""
    out = []
    for ch in core:
        out.append(ch.upper() if rng.random() < 0.3 else ch)
        if rng.random() < 0.3:
            out.append(rng.choice(marks))
    return "".join(out)


def runs_text(rng: random.Random, alphabet: str, count: int, longest: int = 4) -> str:
    """A string of `count` runs of letters from `alphabet`, neighbouring runs of different letters."""
    out = []
    for _ in range(count):
        ch = rng.choice([c for c in alphabet if not out or c != out[-1][0]])
        out.append(ch * rng.randint(1, longest))
    return "".join(out)


def ordinal(k: int) -> str:
    return {2: "second", 3: "third", 4: "fourth", 5: "fifth"}[k]


# ---------------------------------------------------------------------------------------------------------------
# Task families: each takes the family's random generator and returns one Task.
# ---------------------------------------------------------------------------------------------------------------


def digit_sum(rng: random.Random) -> Task:
    base = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 12, 16])
    stem = rng.choice(["digit_sum", "sum_of_digits", "digit_total", "add_up_digits"])
    name = stem if base == 10 else f"{stem}_base{base}"
    where = "in ordinary decimal notation" if base == 10 else f"written in base {base}"
    return Task(
        name,
        "n: int",
        "int",
        f"returns the sum of the digits of a non-negative integer `n` {where}",
        "`n`, an integer with `n >= 0`.",
        f"an int, the sum of the base-{base} digits of `n`, each digit counted by its value (0 to {base - 1}).",
        "`n = 0` has the single digit 0, so the answer is 0.",
        code(
            """
            total = 0
            while n > 0:
                total += n % <B>
                n //= <B>
            return total
            """,
            B=base,
        ),
        [(rng.randint(10, 999),), (rng.randint(1000, 99999),)],
        [(0,), (base - 1,), (base**3,), (rng.randint(10**5, 10**7),)],
    )


def count_chars(rng: random.Random) -> Task:
    if rng.random() < 0.3:
        targets, described = "aeiou", "vowels (a, e, i, o, u)"
    else:
        targets = "".join(sorted(rng.sample(LETTERS, rng.randint(2, 4))))
        described = "the letters " + ", ".join(f"'{ch}'" for ch in targets)
    ignore_case = rng.random() < 0.5
    name = rng.choice(["count_target_letters", "tally_letters", "count_marked_chars", "letter_hits"])
    case_rule = (
        "Upper- and lowercase count alike ('A' counts as 'a')."
        if ignore_case
        else "The match is case-sensitive: only the lowercase letters count, 'A' does not count as 'a'."
    )
    texts = [sentence(rng, rng.randint(2, 5), mixed_case=True) for _ in range(4)]
    return Task(
        name,
        "s: str",
        "int",
        f"counts how many characters of the string `s` are {described}",
        "`s`, any string (letters, spaces, digits, punctuation).",
        "an int, the number of matching characters.",
        "the empty string, or a string with none of those letters, gives 0.",
        code(
            """
            targets = <T>
            return sum(1 for ch in s<LOWER> if ch in targets)
            """,
            T=repr(targets),
            LOWER=".lower()" if ignore_case else "",
        ),
        [(texts[0],), (texts[1],)],
        [("",), (texts[2].upper(),), ("12 + 34 = 46!",), (texts[3],)],
        (case_rule,),
    )


def running_aggregate(rng: random.Random) -> Task:
    op = rng.choice(["max", "min", "sum", "product"])
    name = rng.choice(
        {
            "max": ["prefix_maxima", "running_peak", "best_so_far", "high_water_marks"],
            "min": ["prefix_minima", "running_low", "lowest_so_far", "low_water_marks"],
            "sum": ["prefix_sums", "cumulative_totals", "running_total", "partial_sums"],
            "product": ["prefix_products", "running_product", "cumulative_products"],
        }[op]
    )
    described = {
        "max": "the largest of `values[0]` to `values[i]`",
        "min": "the smallest of `values[0]` to `values[i]`",
        "sum": "the sum of `values[0]` to `values[i]`",
        "product": "the product of `values[0]` to `values[i]`",
    }[op]
    step = {
        "max": "max(result[-1], x)",
        "min": "min(result[-1], x)",
        "sum": "result[-1] + x",
        "product": "result[-1] * x",
    }
    lo, hi = (-3, 4) if op == "product" else (-20, 20)
    size = 5 if op == "product" else 7
    return Task(
        name,
        "values: list[int]",
        "list[int]",
        f"returns a list of the same length as `values` whose item `i` is {described}",
        "`values`, a list of integers.",
        "a new list of ints, one per input item.",
        "an empty list gives an empty list.",
        code(
            """
            result = []
            for x in values:
                result.append(x if not result else <STEP>)
            return result
            """,
            STEP=step[op],
        ),
        [(ints(rng, size, lo, hi),), (ints(rng, size - 1, lo, hi),)],
        [([],), (ints(rng, 1, lo, hi),), (ints(rng, size + 1, lo, hi),)],
        ("Do not modify the input list.",),
    )


def rotate_list(rng: random.Random) -> Task:
    k = rng.randint(1, 6)
    direction = rng.choice(["right", "left"])
    stem = rng.choice([f"rotate_{direction}", f"shift_{direction}", f"cycle_{direction}"])
    name = rng.choice([stem, f"{stem}_{k}", f"{stem}_by_{k}"])
    plural = "position" if k == 1 else "positions"
    if direction == "right":
        moved = f"each item moves {k} places toward the end and the items pushed past the end wrap around to the front"
        body = "return items[-k:] + items[:-k]"
    else:
        moved = f"each item moves {k} places toward the front and the items pushed past the front wrap to the end"
        body = "return items[k:] + items[:k]"
    return Task(
        name,
        "items: list[int]",
        "list[int]",
        f"returns a new list with the items of `items` rotated {k} {plural} to the {direction}: {moved}",
        "`items`, a list of integers.",
        "a new list with the same items in rotated order.",
        f"an empty list gives an empty list; a list shorter than {k} is rotated by {k} modulo its length.",
        code(
            """
            if not items:
                return []
            k = <K> % len(items)
            <BODY>
            """,
            K=k,
            BODY=body,
        ),
        [(ints(rng, k + 3, 0, 50),), (ints(rng, k + 1, 0, 50),)],
        [([],), (ints(rng, 1, 0, 50),), (ints(rng, k - 1 if k > 1 else 2, 0, 50),), (ints(rng, 2 * k, 0, 50),)],
        ("Do not modify the input list.",),
    )


def palindrome(rng: random.Random) -> Task:
    alnum = rng.random() < 0.5
    name = rng.choice(["reads_same_both_ways", "is_mirror_phrase", "symmetric_text", "palindromic_phrase"])
    kept = "letters and digits" if alnum else "letters"
    alphabet = LETTERS[:8] + ("0123456789" if alnum else "")

    def make(is_palindrome: bool) -> str:
        half = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 5)))
        middle = rng.choice(alphabet) if rng.random() < 0.5 else ""
        tail = half[::-1] if is_palindrome else half[::-1][:-1] + rng.choice("xyz")
        return noisy(rng, half + middle + tail)

    return Task(
        name,
        "text: str",
        "bool",
        f"tells whether `text` is a palindrome when only its {kept} are kept and letter case is ignored",
        "`text`, an ASCII string that may contain spaces, punctuation and digits.",
        f"True if the {kept} of `text`, lowercased, read the same forwards and backwards, otherwise False.",
        f"a string with no {kept} at all (for example the empty string) counts as a palindrome: True.",
        code(
            """
            kept = [ch.lower() for ch in text if <TEST>]
            return kept == kept[::-1]
            """,
            TEST="ch.isalnum()" if alnum else "ch.isalpha()",
        ),
        [(make(True),), (make(False),)],
        [("",), ("Ab, 1 bA 2",), (make(True),), ("?! -",)],
        ("Every other character is skipped.",),
    )


def polygonal(rng: random.Random) -> Task:
    k = rng.randint(3, 10)
    shape = {3: "triangular", 4: "square", 5: "pentagonal", 6: "hexagonal"}.get(k, f"{k}-gonal")
    stem = shape.replace("-", "_")
    if stem[0].isdigit():
        name = rng.choice([f"polygonal_{k}_number", f"nth_{k}_gonal", f"gonal_{k}_term"])
    else:
        name = rng.choice([f"{stem}_number", f"nth_{stem}", f"{stem}_term"])
    terms = [((k - 2) * n * n - (k - 4) * n) // 2 for n in range(5)]
    expression = f"{k - 2} * n * n" + (f" - {k - 4} * n" if k > 4 else f" + {4 - k} * n" if k < 4 else "")
    return Task(
        name,
        "n: int",
        "int",
        f"returns the `n`-th {shape} number (the {k}-sided figurate numbers), counting from `n = 0`",
        "`n`, an integer with `n >= 0`.",
        f"an int; the sequence starts {', '.join(map(str, terms))}, ... for n = 0, 1, 2, 3, 4, ...",
        "`n = 0` gives 0.",
        f"return ({expression}) // 2",
        [(rng.randint(5, 12),), (rng.randint(13, 30),)],
        [(0,), (1,), (rng.randint(50, 200),)],
    )


def merge_sorted(rng: random.Random) -> Task:
    mode = rng.choice(["ascending", "descending", "unique"])
    name = rng.choice(["merge_sorted", "combine_ordered", "merge_two_runs", "join_sorted_lists"])
    name += {"ascending": "", "descending": "_desc", "unique": "_unique"}[mode]
    order = "non-increasing" if mode == "descending" else "non-decreasing"
    summary = {
        "ascending": "merges two lists sorted in non-decreasing order into one sorted list that keeps every item",
        "descending": "merges two lists sorted in non-increasing order into one list in non-increasing order",
        "unique": "merges two sorted lists into one strictly increasing list: each distinct value appears once",
    }[mode]
    body = {
        "ascending": "return sorted(a + b)",
        "descending": "return sorted(a + b, reverse=True)",
        "unique": "return sorted(set(a + b))",
    }[mode]

    def sorted_list(size: int) -> list[int]:
        return sorted(ints(rng, size, 0, 20), reverse=mode == "descending")

    return Task(
        name,
        "a: list[int], b: list[int]",
        "list[int]",
        summary,
        f"`a` and `b`, two lists of integers, each sorted in {order} order (duplicates allowed).",
        "a new list of ints." + (" Duplicates, within a list or across both, are kept." if mode != "unique" else ""),
        "if one list is empty the result is "
        + ("the other one's distinct values" if mode == "unique" else "a copy of the other one")
        + "; both empty give [].",
        body,
        [(sorted_list(3), sorted_list(4)), (sorted_list(2), sorted_list(3))],
        [([], sorted_list(3)), ([], []), (sorted_list(5), sorted_list(5))],
    )


def run_length(rng: random.Random) -> Task:
    style = rng.choice(["char_count", "count_char", "skip_one", "pairs"])
    name = rng.choice(["run_length_encode", "rle_compress", "encode_runs", "pack_runs"])
    returns = "list[tuple[str, int]]" if style == "pairs" else "str"
    output = {
        "char_count": "a string with each run written as its character followed by its length: 'aaab' -> 'a3b1'.",
        "count_char": "a string with each run written as its length followed by its character: 'aaab' -> '3a1b'.",
        "skip_one": "a string with each run written as its character followed by its length, the length left out "
        "when it is 1: 'aaab' -> 'a3b'.",
        "pairs": "a list of (character, run length) tuples in order: 'aaab' -> [('a', 3), ('b', 1)].",
    }[style]
    finish = {
        "char_count": 'return "".join(ch + str(count) for ch, count in runs)',
        "count_char": 'return "".join(str(count) + ch for ch, count in runs)',
        "skip_one": 'return "".join(ch + (str(count) if count > 1 else "") for ch, count in runs)',
        "pairs": "return [(ch, count) for ch, count in runs]",
    }[style]
    texts = [runs_text(rng, "abcxyz", rng.randint(2, 5)) for _ in range(3)]
    return Task(
        name,
        "s: str",
        returns,
        "run-length encodes `s`, where a run is a maximal block of equal consecutive characters",
        "`s`, a string of lowercase letters (no digits).",
        output,
        "the empty string gives " + ("an empty list." if style == "pairs" else "the empty string."),
        code(
            """
            runs = []
            for ch in s:
                if runs and runs[-1][0] == ch:
                    runs[-1][1] += 1
                else:
                    runs.append([ch, 1])
            <FINISH>
            """,
            FINISH=finish,
        ),
        [(texts[0],), (texts[1],)],
        [("",), ("q",), (texts[2],)],
    )


def kth_distinct(rng: random.Random) -> Task:
    k = rng.randint(2, 4)
    side = rng.choice(["largest", "smallest"])
    name = f"{ordinal(k)}_{side}" + rng.choice(["", "_distinct", "_unique_value"])
    values = [rng.sample(range(10), k + 2) + ints(rng, rng.randint(1, 4), 0, 9) for _ in range(3)]
    for v in values:
        rng.shuffle(v)
    few = [rng.randint(0, 9) for _ in range(k - 1)] * 2  # at most k - 1 distinct values
    return Task(
        name,
        "values: list[int]",
        "int | None",
        f"returns the {ordinal(k)} {side} distinct value in `values`, or None when there is none",
        "`values`, a list of integers, possibly with repeats.",
        f"an int: sort the distinct values, {'largest' if side == 'largest' else 'smallest'} first, and take "
        f"the one in position {k} (repeated values count once); None if there are fewer than {k} distinct values.",
        f"an empty list, or a list with fewer than {k} distinct values, gives None.",
        code(
            """
            distinct = sorted(set(values)<REVERSE>)
            return distinct[<I>] if len(distinct) >= <K> else None
            """,
            REVERSE=", reverse=True" if side == "largest" else "",
            I=k - 1,
            K=k,
        ),
        [(values[0],), (values[1],)],
        [([],), (few,), (values[2],), ([5] * 4,)],
    )


def long_words(rng: random.Random) -> Task:
    k = rng.randint(2, 7)
    strict = rng.random() < 0.5
    name = rng.choice(["count_long_words", "long_word_tally", "words_over_length", "count_big_words"])
    rule = f"longer than {k} characters" if strict else f"at least {k} characters long"
    return Task(
        name,
        "text: str",
        "int",
        f"counts the words of `text` that are {rule}",
        "`text`, a string of words separated by one or more spaces.",
        f"an int, the number of words with length {'>' if strict else '>='} {k}.",
        "an empty string (or one with only spaces) has no words and gives 0.",
        f"return sum(1 for word in text.split() if len(word) {'>' if strict else '>='} {k})",
        [(sentence(rng, 5),), (sentence(rng, 4),)],
        [("",), ("   ",), (sentence(rng, 7),)],
        ("A word is a maximal run of non-space characters.",),
    )


def clamp_values(rng: random.Random) -> Task:
    lo, hi = rng.randint(-10, 0), rng.randint(5, 20)
    name = rng.choice(["clamp_all", "clip_values", "bound_each", "limit_range"])
    return Task(
        name,
        "values: list[int]",
        "list[int]",
        f"returns a new list where each value of `values` is clamped to the range [{lo}, {hi}]",
        "`values`, a list of integers.",
        f"a list of ints of the same length: values below {lo} become {lo}, values above {hi} become {hi}, "
        "the others stay as they are.",
        "an empty list gives an empty list.",
        f"return [min(max(x, {lo}), {hi}) for x in values]",
        [(ints(rng, 6, -25, 30),), (ints(rng, 5, -25, 30),)],
        [([],), ([lo, hi, lo - 1, hi + 1],), (ints(rng, 7, -25, 30),)],
    )


def gcd_lcm(rng: random.Random) -> Task:
    op = rng.choice(["gcd", "lcm"])
    if op == "gcd":
        name = rng.choice(["gcd_of_list", "common_divisor", "greatest_shared_factor", "list_gcd", "gcd_all"])
        factors = [rng.choice([2, 3, 4, 5, 6]) for _ in range(3)]
        values = [[factor * rng.randint(1, 12) for _ in range(3)] for factor in factors]
        return Task(
            name,
            "values: list[int]",
            "int",
            "returns the greatest common divisor of all the integers in `values`",
            "`values`, a list of integers (negative values count by their absolute value).",
            "a non-negative int, the largest integer dividing every value.",
            "an empty list, or a list of zeros only, gives 0; zeros elsewhere do not change the result.",
            code(
                """
                result = 0
                for x in values:
                    a, b = result, abs(x)
                    while b:
                        a, b = b, a % b
                    result = a
                return result
                """
            ),
            [(values[0],), (values[1],)],
            [([],), ([0, 0],), ([-12, 18, 0],), (values[2] + [7],)],
            ("Do not use math.gcd.",),
        )
    name = rng.choice(["lcm_of_list", "common_multiple", "least_shared_multiple", "list_lcm", "lcm_all"])
    return Task(
        name,
        "values: list[int]",
        "int",
        "returns the least common multiple of all the integers in `values`",
        "`values`, a list of positive integers.",
        "a positive int, the smallest positive integer that every value divides.",
        "an empty list gives 1.",
        code(
            """
            result = 1
            for x in values:
                a, b = result, x
                while b:
                    a, b = b, a % b
                result = result * x // a
            return result
            """
        ),
        [(ints(rng, 3, 1, 12),), (ints(rng, 4, 1, 9),)],
        [([],), ([7],), (ints(rng, 5, 1, 15),)],
        ("Do not use math.lcm or math.gcd.",),
    )


def longest_run(rng: random.Random) -> Task:
    mode = rng.choice(["length", "value", "start"])
    name = {
        "length": rng.choice(["longest_run_length", "longest_streak", "max_repeat_run"]),
        "value": rng.choice(["most_repeated_run_value", "longest_run_item", "streak_value"]),
        "start": rng.choice(["longest_run_start", "streak_start_index", "first_longest_run_at"]),
    }[mode]
    returns = {"length": "int", "value": "int | None", "start": "int"}[mode]
    summary = {
        "length": "returns the length of the longest run of equal consecutive items in `items`",
        "value": "returns the value that forms the longest run of equal consecutive items in `items`",
        "start": "returns the index where the longest run of equal consecutive items in `items` starts",
    }[mode]
    output = {
        "length": "an int, the largest number of equal items standing next to each other.",
        "value": "the repeated value of the longest run; if several runs are equally long, the first one's.",
        "start": "an int index; if several runs are equally long, the start of the first one.",
    }[mode]
    edge = {
        "length": "an empty list gives 0.",
        "value": "an empty list gives None.",
        "start": "an empty list gives -1.",
    }
    finish = {"length": "best", "value": "best_value", "start": "best_start"}[mode]
    lists = [[rng.randint(0, 3) for _ in range(rng.randint(6, 10))] for _ in range(3)]
    return Task(
        name,
        "items: list[int]",
        returns,
        summary,
        "`items`, a list of integers.",
        output,
        edge[mode],
        code(
            """
            best, best_value, best_start = 0, None, -1
            current, start = 0, 0
            for i, x in enumerate(items):
                if i > 0 and x == items[i - 1]:
                    current += 1
                else:
                    current, start = 1, i
                if current > best:
                    best, best_value, best_start = current, x, start
            return <FINISH>
            """,
            FINISH=finish,
        ),
        [(lists[0],), (lists[1],)],
        [([],), ([4],), ([1, 1, 2, 2, 3],), (lists[2],)],
    )


def matrix_reshape(rng: random.Random) -> Task:
    op = rng.choice(["transpose", "rotate_cw", "rotate_ccw", "mirror"])
    name = {
        "transpose": rng.choice(["transpose", "swap_rows_columns", "transpose_grid"]),
        "rotate_cw": rng.choice(["rotate_clockwise", "turn_grid_right", "rotate_quarter_cw"]),
        "rotate_ccw": rng.choice(["rotate_counterclockwise", "turn_grid_left", "rotate_quarter_ccw"]),
        "mirror": rng.choice(["mirror_rows", "flip_left_right", "reverse_each_row"]),
    }[op]
    summary = {
        "transpose": "returns the transpose of a rectangular matrix: row `i` of the result is column `i` of `matrix`",
        "rotate_cw": "returns `matrix` rotated a quarter turn clockwise",
        "rotate_ccw": "returns `matrix` rotated a quarter turn counterclockwise",
        "mirror": "returns `matrix` mirrored left to right: each row's items in reverse order",
    }[op]
    body = {
        "transpose": "return [list(row) for row in zip(*matrix)]",
        "rotate_cw": "return [list(row) for row in zip(*matrix[::-1])]",
        "rotate_ccw": "return [list(row) for row in zip(*matrix)][::-1]",
        "mirror": "return [row[::-1] for row in matrix]",
    }[op]

    def grid(rows: int, cols: int) -> list[list[int]]:
        return [ints(rng, cols, 0, 9) for _ in range(rows)]

    return Task(
        name,
        "matrix: list[list[int]]",
        "list[list[int]]",
        summary,
        "`matrix`, a list of rows, every row a non-empty list of integers of the same length.",
        "a new list of lists of ints (do not modify the input).",
        "an empty matrix `[]` gives `[]`.",
        body,
        [(grid(2, 3),), (grid(3, 3),)],
        [([],), (grid(1, 4),), (grid(3, 1),)],
    )


def dedupe(rng: random.Random) -> Task:
    mode = rng.choice(["first", "last", "casefold"])
    name = rng.choice(["dedupe_keep_order", "unique_in_order", "drop_repeats", "distinct_items"])
    name += {"first": "", "last": "_last", "casefold": "_ignore_case"}[mode]
    if mode == "casefold":
        words = [rng.choice(WORDS[:6]) for _ in range(12)]
        words = [w.upper() if rng.random() < 0.3 else w.capitalize() if rng.random() < 0.3 else w for w in words]
        return Task(
            name,
            "words: list[str]",
            "list[str]",
            "removes repeated words from `words`, comparing them without regard to letter case",
            "`words`, a list of strings.",
            "a new list with the first spelling of each word, in the order of first appearance; a later word "
            "equal to an earlier one ignoring case is dropped.",
            "an empty list gives an empty list.",
            code(
                """
                seen = set()
                result = []
                for word in words:
                    key = word.lower()
                    if key not in seen:
                        seen.add(key)
                        result.append(word)
                return result
                """
            ),
            [(words[:6],), (words[6:],)],
            [([],), (["Ab", "aB", "AB"],), (words,)],
        )
    where = "its first" if mode == "first" else "its last"
    order = "the order of those kept occurrences"
    loop = "items" if mode == "first" else "reversed(items)"
    finish = "result" if mode == "first" else "result[::-1]"
    lists = [ints(rng, rng.randint(6, 9), 0, 5) for _ in range(3)]
    return Task(
        name,
        "items: list[int]",
        "list[int]",
        f"removes duplicates from `items`, keeping only {where} occurrence of each value",
        "`items`, a list of integers.",
        f"a new list with each distinct value once, in {order}.",
        "an empty list gives an empty list.",
        code(
            """
            seen = set()
            result = []
            for x in <LOOP>:
                if x not in seen:
                    seen.add(x)
                    result.append(x)
            return <FINISH>
            """,
            LOOP=loop,
            FINISH=finish,
        ),
        [(lists[0],), (lists[1],)],
        [([],), ([3, 3, 3],), (lists[2],)],
    )


def multiples_sum(rng: random.Random) -> Task:
    a, b = rng.sample(range(2, 10), 2)
    rule = rng.choice(["or", "and", "exactly_one"])
    inclusive = rng.random() < 0.5
    name = rng.choice(["sum_of_multiples", "multiples_total", "add_multiples"]) + f"_{a}_{b}"
    condition = {
        "or": f"x % {a} == 0 or x % {b} == 0",
        "and": f"x % {a} == 0 and x % {b} == 0",
        "exactly_one": f"(x % {a} == 0) != (x % {b} == 0)",
    }[rule]
    described = {
        "or": f"multiples of {a} or of {b} (a number that is a multiple of both counts once)",
        "and": f"numbers that are multiples of both {a} and {b}",
        "exactly_one": f"numbers that are multiples of exactly one of {a} and {b} (not both)",
    }[rule]
    bound = "from 1 up to and including `n`" if inclusive else "from 1 up to but not including `n`"
    stop = "n + 1" if inclusive else "n"
    return Task(
        name,
        "n: int",
        "int",
        f"returns the sum of all positive {described}, counting the numbers {bound}",
        "`n`, an integer with `n >= 0`.",
        "an int, the sum.",
        "`n = 0` (no numbers in range) gives 0.",
        f"return sum(x for x in range(1, {stop}) if {condition})",
        [(rng.randint(10, 40),), (rng.randint(41, 120),)],
        [(0,), (a * b,), (rng.randint(200, 1000),)],
    )


def caesar(rng: random.Random) -> Task:
    k = rng.randint(1, 25)
    decode = rng.random() < 0.5
    if decode:
        name = rng.choice(["caesar_decode", "unshift_letters", "undo_letter_shift"])
        summary = f"decodes a Caesar cipher: each letter of `text` is replaced by the letter {k} places earlier in "
        summary += "the alphabet, wrapping from 'a' back to 'z'"
        sign = "-"
    else:
        name = rng.choice(["caesar_encode", "shift_letters", "rotate_alphabet"])
        summary = f"encodes `text` with a Caesar cipher: each letter is replaced by the letter {k} places later in "
        summary += "the alphabet, wrapping from 'z' around to 'a'"
        sign = "+"
    return Task(
        name,
        "text: str",
        "str",
        summary,
        "`text`, an ASCII string.",
        "the shifted string: uppercase letters stay uppercase, lowercase stay lowercase, and every character "
        "that is not a letter is copied unchanged.",
        "the empty string gives the empty string.",
        code(
            """
            result = []
            for ch in text:
                if "a" <= ch <= "z":
                    result.append(chr((ord(ch) - ord("a") <SIGN> <K>) % 26 + ord("a")))
                elif "A" <= ch <= "Z":
                    result.append(chr((ord(ch) - ord("A") <SIGN> <K>) % 26 + ord("A")))
                else:
                    result.append(ch)
            return "".join(result)
            """,
            SIGN=sign,
            K=k,
        ),
        [(sentence(rng, 2, mixed_case=True),), (sentence(rng, 3, mixed_case=True) + "!",)],
        [("",), ("xyz ABC",), ("Hi, 42 zebras?",)],
    )


def base_digits(rng: random.Random) -> Task:
    base = rng.randint(2, 9)
    width = rng.choice([0, 0, 4, 6, 8])
    names = {2: ["to_binary", "binary_digits", "as_base_two"], 8: ["to_octal", "octal_digits", "as_base_eight"]}
    name = rng.choice(names.get(base, [f"to_base_{base}", f"base{base}_digits", f"in_base_{base}"]))
    if width:
        name += "_padded"
        output = f"a string of base-{base} digits, padded with leading zeros to at least {width} characters."
        edge = f"`n = 0` gives {'0' * width!r}."
    else:
        output = f"a string of base-{base} digits with no leading zeros."
        edge = "`n = 0` gives '0'."
    return Task(
        name,
        "n: int",
        "str",
        f"returns the base-{base} representation of a non-negative integer `n` as a string of digits",
        "`n`, an integer with `n >= 0`.",
        output,
        edge,
        code(
            """
            digits = ""
            while n > 0:
                digits = str(n % <B>) + digits
                n //= <B>
            return <FINISH>
            """,
            B=base,
            FINISH=f'(digits or "0").rjust({width}, "0")' if width else 'digits or "0"',
        ),
        [(rng.randint(5, 60),), (rng.randint(61, 999),)],
        [(0,), (base,), (base**5 - 1,), (rng.randint(10**4, 10**6),)],
        ("Do not use bin(), oct(), format() or f-string format specs.",),
    )


def threshold(rng: random.Random) -> Task:
    t = rng.randint(-5, 20)
    agg = rng.choice(["count", "sum"])
    op, words = rng.choice([(">", "greater than"), (">=", "at least"), ("<", "less than"), ("<=", "at most")])
    names = {
        "count": ["count_passing", "how_many_qualify", "tally_matching"],
        "sum": ["sum_passing", "total_of_matching", "add_qualifying"],
    }
    name = rng.choice(names[agg])
    summary = (
        f"counts the values in `values` that are {words} {t}"
        if agg == "count"
        else f"returns the sum of the values in `values` that are {words} {t}"
    )
    return Task(
        name,
        "values: list[int]",
        "int",
        summary,
        "`values`, a list of integers.",
        f"an int, the {'number' if agg == 'count' else 'sum'} of the values `x` with `x {op} {t}`.",
        "an empty list, or one where no value qualifies, gives 0.",
        f"return sum({'1' if agg == 'count' else 'x'} for x in values if x {op} {t})",
        [(ints(rng, 6, t - 10, t + 10),), (ints(rng, 5, t - 10, t + 10),)],
        [([],), ([t, t, t + 1, t - 1],), (ints(rng, 8, t - 20, t + 20),)],
    )


def collatz(rng: random.Random) -> Task:
    mode = rng.choice(["steps", "peak", "sequence"])
    name = {
        "steps": rng.choice(["collatz_steps", "steps_to_one", "hailstone_length"]),
        "peak": rng.choice(["collatz_peak", "hailstone_max", "highest_hailstone"]),
        "sequence": rng.choice(["collatz_sequence", "hailstone_path", "hailstone_values"]),
    }[mode]
    returns = "list[int]" if mode == "sequence" else "int"
    output = {
        "steps": "an int, the number of steps until the value first becomes 1.",
        "peak": "an int, the largest value reached on the way to 1, counting `n` itself.",
        "sequence": "a list of ints, every value visited from `n` down to the final 1, both included.",
    }[mode]
    edge = {"steps": "`n = 1` needs no step: 0.", "peak": "`n = 1` gives 1.", "sequence": "`n = 1` gives [1]."}
    body = {
        "steps": """
            steps = 0
            while n != 1:
                n = n // 2 if n % 2 == 0 else 3 * n + 1
                steps += 1
            return steps
            """,
        "peak": """
            peak = n
            while n != 1:
                n = n // 2 if n % 2 == 0 else 3 * n + 1
                peak = max(peak, n)
            return peak
            """,
        "sequence": """
            path = [n]
            while n != 1:
                n = n // 2 if n % 2 == 0 else 3 * n + 1
                path.append(n)
            return path
            """,
    }[mode]
    top = 20 if mode == "sequence" else 60
    return Task(
        name,
        "n: int",
        returns,
        "follows the hailstone rule from a positive integer `n` (halve an even number, replace an odd number "
        "by 3 times it plus 1) until it reaches 1",
        "`n`, an integer with `n >= 1`.",
        output,
        edge[mode],
        code(body),
        [(rng.randint(2, top // 2),), (rng.randint(top // 2, top),)],
        [(1,), (16,), (rng.randint(2, top),), (rng.randint(2, top),)],
    )


def word_game(rng: random.Random) -> Task:
    a, b = rng.sample(range(2, 8), 2)
    first, second = rng.choice([("Fizz", "Buzz"), ("Ping", "Pong"), ("Foo", "Bar"), ("Zip", "Zap"), ("Tick", "Tock")])
    name = rng.choice(["number_words", "say_numbers", "counting_game", f"{first.lower()}_{second.lower()}_list"])
    return Task(
        name,
        "n: int",
        "list[str]",
        f"plays a counting game: it returns the numbers 1 to `n` as strings, except that multiples of {a} become "
        f"'{first}', multiples of {b} become '{second}', and multiples of both become '{first}{second}'",
        "`n`, an integer with `n >= 0`.",
        f"a list of `n` strings; a number that is a multiple of neither {a} nor {b} is written in decimal.",
        "`n = 0` gives an empty list.",
        code(
            """
            result = []
            for i in range(1, n + 1):
                word = ""
                if i % <A> == 0:
                    word += <W1>
                if i % <B> == 0:
                    word += <W2>
                result.append(word or str(i))
            return result
            """,
            A=a,
            B=b,
            W1=repr(first),
            W2=repr(second),
        ),
        [(rng.randint(4, 8),), (rng.randint(9, 14),)],
        [(0,), (1,), (a * b,)],
    )


def chunk_list(rng: random.Random) -> Task:
    k = rng.randint(2, 5)
    keep = rng.random() < 0.5
    name = rng.choice(["chunk", "split_into_groups", "batch_items", "groups_of"]) + f"_{k}"
    if keep:
        output = f"a list of lists; every group has {k} items except possibly the last, which holds what is left."
        stop = "len(items)"
    else:
        output = f"a list of lists of exactly {k} items each; leftover items that do not fill a group are dropped."
        stop = f"len(items) - {k} + 1"
    return Task(
        name,
        "items: list[int]",
        "list[list[int]]",
        f"splits `items` into consecutive groups of {k} items, in order",
        "`items`, a list of integers.",
        output,
        "an empty list gives an empty list" + ("." if keep else f", and so does a list shorter than {k}."),
        f"return [items[i : i + {k}] for i in range(0, {stop}, {k})]",
        [(ints(rng, 2 * k + 1, 0, 30),), (ints(rng, 3 * k, 0, 30),)],
        [([],), (ints(rng, k - 1, 0, 30),), (ints(rng, k, 0, 30),), (ints(rng, 4 * k - 1, 0, 30),)],
    )


def adjacent_pairs(rng: random.Random) -> Task:
    op = rng.choice(["difference", "absolute", "sum", "larger"])
    name = {
        "difference": rng.choice(["consecutive_differences", "step_changes", "deltas"]),
        "absolute": rng.choice(["absolute_gaps", "neighbour_distances", "abs_deltas"]),
        "sum": rng.choice(["pair_sums", "neighbour_sums", "adjacent_totals"]),
        "larger": rng.choice(["pairwise_larger", "neighbour_maxima", "adjacent_max"]),
    }[op]
    described = {
        "difference": "`values[i + 1] - values[i]` (the later minus the earlier)",
        "absolute": "the absolute difference `abs(values[i + 1] - values[i])`",
        "sum": "the sum `values[i] + values[i + 1]`",
        "larger": "the larger of `values[i]` and `values[i + 1]`",
    }[op]
    expr = {
        "difference": "values[i + 1] - values[i]",
        "absolute": "abs(values[i + 1] - values[i])",
        "sum": "values[i] + values[i + 1]",
        "larger": "max(values[i], values[i + 1])",
    }[op]
    return Task(
        name,
        "values: list[int]",
        "list[int]",
        f"returns, for each pair of neighbouring items of `values`, {described}",
        "`values`, a list of integers.",
        "a list of ints with one item fewer than `values`.",
        "a list with fewer than two items gives an empty list.",
        f"return [{expr} for i in range(len(values) - 1)]",
        [(ints(rng, 5, -10, 10),), (ints(rng, 4, -10, 10),)],
        [([],), ([rng.randint(-5, 5)],), (ints(rng, 7, -20, 20),)],
    )


def pattern_count(rng: random.Random) -> Task:
    pattern = rng.choice(["aa", "ab", "aba", "ana", "xx", "abc", "oo", "ss", "bab", "nan"])
    overlap = rng.random() < 0.5
    name = rng.choice(["count_pattern", "pattern_hits", "occurrences_of", "count_substring"])
    name += f"_{pattern}" + ("_overlapping" if overlap else "")
    alphabet = "".join(sorted(set(pattern))) + "z"

    def with_pattern() -> str:  # random runs with the pattern put in once or twice
        second = pattern if rng.random() < 0.5 else ""
        return runs_text(rng, alphabet, 2, 3) + pattern + runs_text(rng, alphabet, 3, 3) + second + rng.choice(alphabet)

    texts = [with_pattern() for _ in range(3)]
    if overlap:
        rule = "overlapping matches count separately: 'aaa' holds 'aa' twice"
        body = code(
            """
            count = 0
            for i in range(len(text) - <N> + 1):
                if text[i : i + <N>] == <P>:
                    count += 1
            return count
            """,
            N=len(pattern),
            P=repr(pattern),
        )
    else:
        rule = "matches may not overlap: scan from the left and continue after each match, so 'aaa' holds 'aa' once"
        body = f"return text.count({pattern!r})"
    return Task(
        name,
        "text: str",
        "int",
        f"counts how many times the substring '{pattern}' occurs in `text`",
        "`text`, a string of lowercase letters.",
        f"an int; {rule}.",
        f"the empty string, or a string without '{pattern}', gives 0.",
        body,
        [(texts[0],), (texts[1],)],
        [("",), (pattern * 3,), (texts[2],)],
    )


def word_transform(rng: random.Random) -> Task:
    op = rng.choice(["reverse_order", "reverse_each", "capitalize", "by_length"])
    name = {
        "reverse_order": rng.choice(["reverse_word_order", "words_backwards", "flip_sentence"]),
        "reverse_each": rng.choice(["reverse_each_word", "mirror_words", "spell_words_backwards"]),
        "capitalize": rng.choice(["capitalize_words", "title_each_word", "upper_initials"]),
        "by_length": rng.choice(["sort_words_by_length", "order_words_by_size", "shortest_words_first"]),
    }[op]
    summary = {
        "reverse_order": "returns the words of `text` in reverse order",
        "reverse_each": "reverses the letters of every word of `text` while keeping the words in place",
        "capitalize": "makes the first letter of every word of `text` uppercase and the rest of it lowercase",
        "by_length": "sorts the words of `text` from shortest to longest; words of equal length keep their order",
    }[op]
    body = {
        "reverse_order": 'return " ".join(text.split()[::-1])',
        "reverse_each": 'return " ".join(word[::-1] for word in text.split())',
        "capitalize": 'return " ".join(word[:1].upper() + word[1:].lower() for word in text.split())',
        "by_length": 'return " ".join(sorted(text.split(), key=len))',
    }[op]
    mixed = op == "capitalize"
    return Task(
        name,
        "text: str",
        "str",
        summary,
        "`text`, words of letters separated by single spaces, with no leading or trailing space.",
        "a string of the resulting words joined by single spaces.",
        "the empty string gives the empty string.",
        body,
        [(sentence(rng, 4, mixed),), (sentence(rng, 3, mixed),)],
        [("",), (rng.choice(WORDS),), (sentence(rng, 6, mixed).upper() if mixed else sentence(rng, 6),)],
    )


def primes_up_to(rng: random.Random) -> Task:
    mode = rng.choice(["count", "count_below", "sum", "largest"])
    name = {
        "count": rng.choice(["count_primes_upto", "prime_count", "how_many_primes"]),
        "count_below": rng.choice(["count_primes_below", "primes_under_count", "prime_tally_below"]),
        "sum": rng.choice(["sum_of_primes", "prime_total", "add_primes_upto"]),
        "largest": rng.choice(["largest_prime_upto", "prime_at_or_below", "biggest_prime_not_above"]),
    }[mode]
    summary = {
        "count": "counts the prime numbers `p` with `p <= n`",
        "count_below": "counts the prime numbers `p` with `p < n`",
        "sum": "returns the sum of the prime numbers `p` with `p <= n`",
        "largest": "returns the largest prime number `p` with `p <= n`, or None if there is none",
    }[mode]
    edge = {"largest": "`n < 2` gives None.", "count_below": "`n <= 2` gives 0."}.get(mode, "`n < 2` gives 0.")
    prime = "all(m % d != 0 for d in range(2, m) if d * d <= m)"
    if mode == "largest":
        body = code(
            """
            for m in range(n, 1, -1):
                if <PRIME>:
                    return m
            return None
            """,
            PRIME=prime,
        )
    else:
        body = code(
            """
            total = 0
            for m in range(2, <STOP>):
                if <PRIME>:
                    total += <ADD>
            return total
            """,
            STOP="n" if mode == "count_below" else "n + 1",
            PRIME=prime,
            ADD="m" if mode == "sum" else "1",
        )
    return Task(
        name,
        "n: int",
        "int | None" if mode == "largest" else "int",
        summary,
        "`n`, an integer (it may be 0, 1 or negative).",
        "an int" + (" (the prime itself)." if mode == "largest" else "."),
        edge,
        body,
        [(rng.randint(10, 30),), (rng.randint(31, 100),)],
        [(1,), (2,), (rng.randint(100, 300),)],
        ("A prime is an integer greater than 1 whose only positive divisors are 1 and itself.",),
    )


def flatten(rng: random.Random) -> Task:
    deep = rng.random() < 0.5
    if deep:
        name = rng.choice(["flatten_deep", "flatten_all_levels", "unnest_fully", "flatten_nested"])
        body = code(
            """
            result = []
            for item in nested:
                if isinstance(item, list):
                    result.extend(<NAME>(item))
                else:
                    result.append(item)
            return result
            """,
            NAME=name,
        )
        examples = [([1, [2, [3, 4]], 5],), ([[rng.randint(0, 9)], [[rng.randint(0, 9)]], rng.randint(0, 9)],)]
        hidden = [([],), ([[], [[]]],), ([[[[rng.randint(0, 9)]]], ints(rng, 2, 0, 9)],)]
        return Task(
            name,
            "nested: list",
            "list[int]",
            "flattens a list that may contain integers and lists nested to any depth into a flat list of integers",
            "`nested`, a list whose items are integers or lists of the same kind.",
            "a list of the integers, in the order they appear left to right.",
            "an empty list, or one holding only empty lists, gives [].",
            body,
            examples,
            hidden,
        )
    name = rng.choice(["flatten_once", "concat_sublists", "join_lists", "flatten_one_level", "chain_lists"])
    return Task(
        name,
        "lists: list[list[int]]",
        "list[int]",
        "concatenates the lists inside `lists` into one list, in order",
        "`lists`, a list of lists of integers.",
        "a new list of ints.",
        "an empty outer list, or inner lists that are all empty, give [].",
        "return [x for sub in lists for x in sub]",
        [([ints(rng, 2, 0, 9), ints(rng, 3, 0, 9)],), ([ints(rng, 1, 0, 9), [], ints(rng, 2, 0, 9)],)],
        [([],), ([[], []],), ([ints(rng, 3, 0, 9) for _ in range(3)],)],
    )


def window(rng: random.Random) -> Task:
    k = rng.randint(2, 4)
    op = rng.choice(["sum", "max", "min"])
    name = {"sum": "window_sums", "max": "window_maxima", "min": "window_minima"}[op]
    name = rng.choice([name, f"{name}_{k}", f"sliding_{op}_{k}"])
    return Task(
        name,
        "values: list[int]",
        "list[int]",
        f"returns the {op} of every window of {k} consecutive items of `values`, from left to right",
        "`values`, a list of integers.",
        f"a list of ints with `len(values) - {k} + 1` items: item `i` is the {op} of `values[i : i + {k}]`.",
        f"a list with fewer than {k} items gives an empty list.",
        f"return [{op}(values[i : i + {k}]) for i in range(len(values) - {k} + 1)]",
        [(ints(rng, k + 3, -10, 10),), (ints(rng, k + 1, -10, 10),)],
        [([],), (ints(rng, k - 1, -10, 10),), (ints(rng, k, -10, 10),), (ints(rng, 8, -10, 10),)],
    )


def first_divisible(rng: random.Random) -> Task:
    d = rng.randint(2, 9)
    last = rng.random() < 0.5
    name = rng.choice(["index_of_multiple", "find_divisible", "position_of_multiple"])
    name += ("_last" if last else "_first") + f"_{d}"
    loop = "range(len(values) - 1, -1, -1)" if last else "range(len(values))"
    return Task(
        name,
        "values: list[int]",
        "int",
        f"returns the index of the {'last' if last else 'first'} value in `values` that is divisible by {d}",
        "`values`, a list of integers (0 and negative multiples count as divisible).",
        "an int index, or -1 when no value is divisible.",
        "an empty list gives -1.",
        code(
            """
            for i in <LOOP>:
                if values[i] % <D> == 0:
                    return i
            return -1
            """,
            LOOP=loop,
            D=d,
        ),
        [([d * rng.randint(1, 5) + 1, d * rng.randint(1, 5), -d, 7 * d + 1],), (ints(rng, 6, -30, 30),)],
        [([],), ([d * 3 + 1] * 3,), ([0],), (ints(rng, 8, -30, 30),)],
    )


def most_common_letter(rng: random.Random) -> Task:
    tie = rng.choice(["first", "alphabetical"])
    ignore_case = rng.random() < 0.5
    name = rng.choice(["most_common_letter", "top_letter", "frequent_letter", "commonest_char"])
    tie_rule = (
        "the one that appears first in `text`" if tie == "first" else "the one that comes first in alphabetical order"
    )
    if ignore_case:
        case_rule = "Case is ignored ('A' and 'a' are the same letter) and the letter is returned in lowercase."
    else:
        case_rule = "Case matters: 'A' and 'a' are different letters; uppercase sorts before lowercase."
    lower = ".lower()" if ignore_case else ""
    finish = (
        code(
            """
            for ch in text<LOWER>:
                if counts.get(ch) == best:
                    return ch
            return ""
            """,
            LOWER=lower,
        )
        if tie == "first"
        else "return min(ch for ch in counts if counts[ch] == best)"
    )
    texts = [sentence(rng, rng.randint(2, 4), mixed_case=True) for _ in range(3)]
    return Task(
        name,
        "text: str",
        "str",
        f"returns the letter that occurs most often in `text`; if several letters are tied, {tie_rule}",
        "`text`, an ASCII string; only letters are counted (spaces, digits and punctuation are not).",
        "a one-character string.",
        'a string with no letters (for example the empty string) gives the empty string "".',
        code(
            """
            counts = dict()
            for ch in text<LOWER>:
                if ch.isalpha():
                    counts[ch] = counts.get(ch, 0) + 1
            if not counts:
                return ""
            best = max(counts.values())
            <FINISH>
            """,
            LOWER=lower,
            FINISH=finish,
        ),
        [(texts[0],), (texts[1],)],
        [("",), ("123 !?",), ("baBA ab",), (texts[2],)],
        (case_rule,),
    )


def every_kth(rng: random.Random) -> Task:
    k = rng.randint(2, 6)
    keep = rng.random() < 0.4
    if keep:
        name = rng.choice(["keep_every", "take_every", "every_nth_item"]) + f"_{k}"
        summary = f"keeps only the items of `items` at positions {k}, {2 * k}, {3 * k}, ... counting from 1"
        rule = "== 0"
    else:
        name = rng.choice(["drop_every", "remove_every", "skip_every"]) + f"_{k}"
        summary = f"removes the items of `items` at positions {k}, {2 * k}, {3 * k}, ... counting from 1"
        rule = "!= 0"
    return Task(
        name,
        "items: list[int]",
        "list[int]",
        summary,
        "`items`, a list of integers.",
        "a new list with the remaining items in their original order.",
        "an empty list gives an empty list.",
        f"return [x for i, x in enumerate(items, start=1) if i % {k} {rule}]",
        [(ints(rng, 2 * k + 1, 0, 50),), (ints(rng, k + 1, 0, 50),)],
        [([],), (ints(rng, k - 1, 0, 50),), (ints(rng, 3 * k, 0, 50),)],
    )


def digit_transform(rng: random.Random) -> Task:
    op = rng.choice(["reverse", "largest", "smallest", "count"])
    d = rng.randint(0, 9)
    name = {
        "reverse": rng.choice(["reverse_digits", "digits_backwards", "mirror_number"]),
        "largest": rng.choice(["largest_rearrangement", "max_digit_shuffle", "biggest_from_digits"]),
        "smallest": rng.choice(["smallest_rearrangement", "min_digit_shuffle", "smallest_from_digits"]),
        "count": rng.choice(["count_digit", "digit_frequency", "occurrences_of_digit"]) + f"_{d}",
    }[op]
    summary = {
        "reverse": "returns the integer whose decimal digits are those of `n` in reverse order",
        "largest": "returns the largest integer that can be written with exactly the decimal digits of `n`",
        "smallest": "returns the smallest integer written with the decimal digits of `n` in some order",
        "count": f"counts how many of the decimal digits of `n` are equal to {d}",
    }[op]
    output = {
        "reverse": "an int; leading zeros of the reversed digits disappear (1200 gives 21).",
        "largest": "an int (digits in non-increasing order).",
        "smallest": "an int (digits in non-decreasing order, so leading zeros disappear: 3010 gives 13).",
        "count": "an int.",
    }[op]
    body = {
        "reverse": "return int(str(n)[::-1])",
        "largest": 'return int("".join(sorted(str(n), reverse=True)))',
        "smallest": 'return int("".join(sorted(str(n))))',
        "count": f"return str(n).count({str(d)!r})",
    }[op]
    return Task(
        name,
        "n: int",
        "int",
        summary,
        "`n`, an integer with `n >= 0`.",
        output,
        "`n = 0` gives " + ("1 (the single digit 0)." if op == "count" and d == 0 else "0."),
        body,
        [
            (int(f"{rng.randint(1, 9)}{d}{rng.randint(0, 99)}"),),
            (int(f"{rng.randint(10, 99)}{d}{rng.randint(0, 9999)}{d}"),),
        ],
        [(0,), (1200 + d,), (rng.randint(10**6, 10**8),)],
    )


def partition(rng: random.Random) -> Task:
    d = rng.randint(2, 5)
    name = rng.choice(["split_by_divisor", "partition_multiples", "separate_multiples"]) + f"_{d}"
    return Task(
        name,
        "values: list[int]",
        "tuple[list[int], list[int]]",
        f"splits `values` into the values divisible by {d} and all the others",
        "`values`, a list of integers (0 and negative multiples count as divisible).",
        f"a tuple of two lists: first the values divisible by {d}, then the rest, each keeping the input order.",
        "an empty list gives `([], [])`.",
        code(
            """
            matching = []
            rest = []
            for x in values:
                if x % <D> == 0:
                    matching.append(x)
                else:
                    rest.append(x)
            return matching, rest
            """,
            D=d,
        ),
        [(ints(rng, 6, -20, 20),), (ints(rng, 5, 0, 30),)],
        [([],), ([d * 2 + 1, d * 4 + 1],), (ints(rng, 8, -30, 30),)],
    )


def anagram(rng: random.Random) -> Task:
    mode = rng.choice(["spaces_case", "letters_only", "exact"])
    name = rng.choice(["are_anagrams", "is_anagram_pair", "same_letters", "anagram_check"])
    rule = {
        "spaces_case": "ignoring spaces and letter case (every other character counts)",
        "letters_only": "counting only letters and ignoring letter case (spaces, digits and punctuation are skipped)",
        "exact": "counting every character exactly, spaces included, with case mattering",
    }[mode]
    key = {
        "spaces_case": 'sorted(ch.lower() for ch in <S> if ch != " ")',
        "letters_only": "sorted(ch.lower() for ch in <S> if ch.isalpha())",
        "exact": "sorted(<S>)",
    }[mode]

    def pair(same: bool) -> tuple[str, str]:
        a = sentence(rng, rng.randint(1, 2))
        chars = list(a.replace(" ", "")) if mode != "exact" else list(a)
        rng.shuffle(chars)
        if not same:
            chars[0] = rng.choice([c for c in LETTERS if c != chars[0]])
        b = "".join(chars)
        if mode == "spaces_case":
            b = noisy(rng, b, marks=" ")
        elif mode == "letters_only":
            b = noisy(rng, b)
        return a, b

    return Task(
        name,
        "a: str, b: str",
        "bool",
        f"tells whether `a` and `b` are anagrams of each other, {rule}",
        "`a` and `b`, two ASCII strings.",
        "True if the counted characters of `a` and `b` are the same multiset, otherwise False.",
        "two empty strings are anagrams: True.",
        "return " + key.replace("<S>", "a") + " == " + key.replace("<S>", "b"),
        [pair(True), pair(False)],
        [("", ""), ("Dusty room", "Study, Moor!"), pair(True), pair(False)],
    )


def interleave(rng: random.Random) -> Task:
    mode = rng.choice(["append_rest", "stop_short"])
    name = rng.choice(["interleave", "alternate_lists", "weave", "zip_merge"]) + (
        "_all" if mode == "append_rest" else "_pairs"
    )
    if mode == "append_rest":
        output = "a new list; once the shorter list runs out, the rest of the longer one follows in order."
        edge = "if one list is empty the result is a copy of the other; both empty give []."
        body = code(
            """
            result = []
            for i in range(max(len(a), len(b))):
                if i < len(a):
                    result.append(a[i])
                if i < len(b):
                    result.append(b[i])
            return result
            """
        )
    else:
        output = "a new list; it stops when the shorter list runs out, so leftover items are dropped."
        edge = "if either list is empty the result is []."
        body = code(
            """
            result = []
            for x, y in zip(a, b):
                result.append(x)
                result.append(y)
            return result
            """
        )
    return Task(
        name,
        "a: list[int], b: list[int]",
        "list[int]",
        "builds a list taking items alternately from `a` and `b`: `a[0]`, then `b[0]`, `a[1]`, `b[1]` and so on",
        "`a` and `b`, two lists of integers, possibly of different lengths.",
        output,
        edge,
        body,
        [(ints(rng, 3, 0, 9), ints(rng, 3, 10, 19)), (ints(rng, 4, 0, 9), ints(rng, 2, 10, 19))],
        [([], ints(rng, 2, 10, 19)), ([], []), (ints(rng, 1, 0, 9), ints(rng, 4, 10, 19))],
    )


def subarray_sum(rng: random.Random) -> Task:
    mode = rng.choice(["max_nonempty", "max_or_empty", "min_nonempty"])
    name = {
        "max_nonempty": rng.choice(["best_stretch_sum", "max_block_sum", "largest_contiguous_sum"]),
        "max_or_empty": rng.choice(["best_gain", "max_block_sum_or_zero", "largest_stretch_or_zero"]),
        "min_nonempty": rng.choice(["worst_stretch_sum", "min_block_sum", "smallest_contiguous_sum"]),
    }[mode]
    if mode == "max_or_empty":
        return Task(
            name,
            "values: list[int]",
            "int",
            "returns the largest sum of a block of consecutive items of `values`, where the empty block (sum 0) "
            "is allowed",
            "`values`, a list of integers.",
            "an int, never below 0.",
            "an empty list, or one with only negative values, gives 0.",
            code(
                """
                best = current = 0
                for x in values:
                    current = max(0, current + x)
                    best = max(best, current)
                return best
                """
            ),
            [(ints(rng, 7, -10, 10),), (ints(rng, 6, -10, 10),)],
            [([],), ([-3, -1, -2],), (ints(rng, 9, -10, 10),)],
        )
    pick = "max" if mode == "max_nonempty" else "min"
    return Task(
        name,
        "values: list[int]",
        "int",
        f"returns the {'largest' if pick == 'max' else 'smallest'} sum of a non-empty block of consecutive "
        "items of `values`",
        "`values`, a non-empty list of integers.",
        "an int.",
        "a one-item list gives that item, even when it is "
        + ("negative; all-negative lists give their largest item." if pick == "max" else "positive."),
        code(
            """
            best = current = values[0]
            for x in values[1:]:
                current = <PICK>(x, current + x)
                best = <PICK>(best, current)
            return best
            """,
            PICK=pick,
        ),
        [(ints(rng, 7, -10, 10),), (ints(rng, 6, -10, 10),)],
        [([rng.randint(-9, -1)],), ([-4, -2, -7],), ([3, 5, 1],), (ints(rng, 9, -10, 10),)],
    )


def squeeze(rng: random.Random) -> Task:
    target = rng.choice([None, None, " ", "-", "a", "o", "x"])
    if target is None:
        name = rng.choice(["squeeze_repeats", "collapse_runs", "drop_consecutive_duplicates"])
        texts = [runs_text(rng, "abcd -", rng.randint(4, 7), longest=3) for _ in range(3)]
        return Task(
            name,
            "text: str",
            "str",
            "replaces every run of equal consecutive characters in `text` by a single copy of that character",
            "`text`, any string.",
            "the squeezed string: 'aabbbca' gives 'abca' (non-neighbouring repeats stay).",
            "the empty string gives the empty string.",
            code(
                """
                result = []
                for ch in text:
                    if not result or result[-1] != ch:
                        result.append(ch)
                return "".join(result)
                """
            ),
            [(texts[0],), (texts[1],)],
            [("",), ("zzzz",), (texts[2],)],
        )
    label = {" ": "spaces", "-": "dashes", "a": "letter_a", "o": "letter_o", "x": "letter_x"}[target]
    name = rng.choice(["squeeze", "collapse", "single"]) + f"_{label}"
    texts = [runs_text(rng, "bc" + target, rng.randint(5, 8), longest=3) for _ in range(3)]
    return Task(
        name,
        "text: str",
        "str",
        f"replaces every run of consecutive {target!r} characters in `text` by a single {target!r}",
        "`text`, any string.",
        f"the string with runs of {target!r} shortened to one; runs of any other character are left alone.",
        "the empty string gives the empty string.",
        code(
            """
            result = []
            for ch in text:
                if ch == <C> and result and result[-1] == <C>:
                    continue
                result.append(ch)
            return "".join(result)
            """,
            C=repr(target),
        ),
        [(texts[0],), (texts[1],)],
        [("",), (target * 4 + "bb" + target * 2,), (texts[2],)],
    )


def pair_count(rng: random.Random) -> Task:
    t = rng.randint(0, 15)
    op, words = rng.choice([("==", f"exactly {t}"), (">", f"more than {t}"), ("<", f"less than {t}")])
    name = rng.choice(["count_pairs", "pair_tally", "matching_pairs"]) + f"_{t}"
    return Task(
        name,
        "values: list[int]",
        "int",
        f"counts the pairs of positions `i < j` in `values` with `values[i] + values[j]` {words}",
        "`values`, a list of integers (equal values at different positions form different pairs).",
        f"an int, the number of index pairs (i, j) with i < j and values[i] + values[j] {op} {t}.",
        "a list with fewer than two items gives 0.",
        code(
            """
            count = 0
            for i in range(len(values)):
                for j in range(i + 1, len(values)):
                    if values[i] + values[j] <OP> <T>:
                        count += 1
            return count
            """,
            OP=op,
            T=t,
        ),
        [(ints(rng, 5, 0, t + 2),), (ints(rng, 6, 0, t + 2),)],
        [([],), ([t],), ([t // 2] * 4,), (ints(rng, 8, -3, t + 3),)],
    )


def extreme_index(rng: random.Random) -> Task:
    which = rng.choice(["max", "min"])
    tie = rng.choice(["first", "last"])
    name = rng.choice([f"index_of_{which}", f"arg{which}", f"{which}_position"]) + f"_{tie}"
    better = {"max": ">", "min": "<"}[which] + ("=" if tie == "last" else "")
    tied = ints(rng, 6, 0, 9)
    tied[rng.randrange(3)] = tied[rng.randrange(3, 6)] = (max if which == "max" else min)(tied)  # two extremes
    return Task(
        name,
        "values: list[int]",
        "int",
        f"returns the index of the {'largest' if which == 'max' else 'smallest'} value in `values`; if it "
        f"occurs several times, the index of its {tie} occurrence",
        "`values`, a list of integers.",
        "an int index.",
        "an empty list gives -1.",
        code(
            """
            best = -1
            for i, x in enumerate(values):
                if best == -1 or x <BETTER> values[best]:
                    best = i
            return best
            """,
            BETTER=better,
        ),
        [(ints(rng, 6, 0, 9),), (tied,)],
        [([],), ([5],), ([2, 2, 2],), (ints(rng, 8, -20, 20),)],
    )


FAMILIES = [
    digit_sum, count_chars, running_aggregate, rotate_list, palindrome, polygonal, merge_sorted, run_length,
    kth_distinct, long_words, clamp_values, gcd_lcm, longest_run, matrix_reshape, dedupe, multiples_sum, caesar,
    base_digits, threshold, collatz, word_game, chunk_list, adjacent_pairs, pattern_count, word_transform,
    primes_up_to, flatten, window, first_divisible, most_common_letter, every_kth, digit_transform, partition,
    anagram, interleave, subarray_sum, squeeze, pair_count, extreme_index,
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def render_call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(repr(arg) for arg in args)})"


def render_assert(name: str, args: tuple, expected: object) -> str:
    call = render_call(name, args)
    if expected is None or isinstance(expected, bool):
        return f"assert {call} is {expected!r}"
    return f"assert {call} == {expected!r}"


def build_row(task: Task, rng: random.Random) -> dict:
    """Render one task: run the reference solution (our own code, above) on each argument tuple for the tests."""
    signature = f"def {task.name}({task.params}) -> {task.returns}:"
    solution = signature + "\n" + textwrap.indent(task.body, "    ")
    namespace: dict = {}
    exec(solution, namespace)  # our reference code, written in this script
    function = namespace[task.name]
    tests = []
    for args in task.examples + task.hidden:
        expected = function(*copy.deepcopy(args))
        if ast.literal_eval(repr(expected)) != expected:
            raise ValueError(f"{task.name}: expected value {expected!r} is not a plain literal")
        test = render_assert(task.name, args, expected)
        if test not in tests:  # a hidden case drawn equal to an earlier one
            tests.append(test)
    if not 4 <= len(tests) <= 6:
        raise ValueError(f"{task.name}: {len(tests)} tests: {tests}")
    lines = [
        f"{rng.choice(OPENINGS)} `{task.name}` that {task.summary.rstrip('.')}.",
        "",
        rng.choice(SIGNATURE_LINES).format(signature=signature),
        "",
        f"- Input: {task.inputs}",
        f"- Output: {task.output}",
        f"- Edge case: {task.edge}",
        *(f"- {note}" for note in task.notes),
        "",
        "Examples:",
        "",
        "```python",
        *tests[:2],
        "```",
    ]
    return {"question": "\n".join(lines), "entry_point": task.name, "tests": tests, "solution": solution}


def family_rows(family, count: int) -> list[dict]:
    """`count` rows of one family with distinct reference solutions (so distinct names or constants)."""
    rng = random.Random(f"{SEED}-{family.__name__}")
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(50 * count):
        row = build_row(family(rng), rng)
        if row["solution"] not in seen:
            seen.add(row["solution"])
            rows.append(row)
            if len(rows) == count:
                return rows
    raise ValueError(f"family {family.__name__} gave only {len(rows)} distinct tasks")


def generate() -> list[dict]:
    """Every row, families interleaved (row i comes from family i % len(FAMILIES)), so any prefix is varied."""
    per_family = [family_rows(family, ROWS_PER_FAMILY) for family in FAMILIES]
    rows = []
    for round_rows in zip(*per_family):
        for row in round_rows:
            rows.append({"id": f"code-task-{len(rows):04d}", **row})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSONL file")
    args = parser.parse_args(argv)
    rows = generate()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8", newline="\n")
    print(f"wrote {len(rows)} tasks from {len(FAMILIES)} families to {args.output}")


if __name__ == "__main__":
    main()
