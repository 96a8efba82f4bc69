"""Answer extraction, equivalence, timeouts and pool grading (scalequest.math.answers)."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from scalequest.math import GradeResult, answers_match, extract_answer, grade, grade_many, last_boxed, load_benchmark

# A comparison that is genuinely slow: sympy expands and simplifies the difference of two huge
# polynomials. Measured: more than 40 s without a timeout, about 140 MB of memory.
SLOW_PAIR = ("(x+y+z+w)^{40}", "(x+y+z+w)^{41}")
TIMEOUT = 2.0
SLACK = 3.0


# ----------------------------------------------------------------------------------------------
# extract_answer
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("So $x = \\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("First \\boxed{1}, then corrected: \\boxed{2}.", "2"),  # the last box wins
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("The result is \\fbox{7}", "7"),
        ("Hence $\\boxed 5$.", "5"),
        ("\\boxed{3} and then a cut-off \\boxed{4", "3"),  # an unclosed last box is ignored
        ("The answer is 3. Wait, I get \\boxed{4}", "4"),  # a box beats the phrase
        ("She makes 9 * 2 = 18 dollars.\nThe answer is 18.", "18"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The answer is 3. No. The answer is 3.5.", "3.5"),  # last occurrence; decimal point kept
        ("the answer is: $5", "5"),
        ("The answer is:\n\n42\n", "42"),
        ("The answer is **42**. That is all.", "42"),
        ("Therefore, the final answer is 42", "42"),
        ("I could not solve this problem.", None),
        ("", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_last_boxed_without_box() -> None:
    assert last_boxed("no box here") is None


# ----------------------------------------------------------------------------------------------
# answers_match: a table of tricky pairs
# ----------------------------------------------------------------------------------------------

EQUIVALENT = [
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "1/2"),
    ("0.5", "\\frac12"),
    ("1.5", "\\frac{3}{2}"),
    ("-\\frac{1}{2}", "-0.5"),
    ("\\frac{-1}{2}", "-0.5"),
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("3\\sqrt{3}", "\\sqrt{27}"),
    ("sqrt(2)", "\\sqrt{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("[1, 2)", "[1,2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("\\{2, 1\\}", "\\{1,2\\}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("1, -2", "-2, 1"),  # a list of all solutions is unordered
    ("30^\\circ", "30"),
    ("30", "30^\\circ"),
    ("90", "90^{\\circ}"),
    ("5 cm", "5"),
    ("12 apples", "12"),
    ("12", "12 apples"),
    ("5 dollars", "5"),
    ("\\$5", "5"),
    ("$5", "5"),
    ("\\$1,000", "1000"),
    ("\\text{5 cm}", "5"),
    ("5\\text{ cm}^2", "5"),
    ("3 km/h", "3"),
    ("1,000", "1000"),
    ("1000", "1,000"),
    ("10,\\!000", "10000"),
    ("1,000,000", "1000000"),
    ("x=3", "3"),
    ("3", "x=3"),
    ("x = -2", "-2"),
    ("50\\%", "50"),  # percent rule: the sign is optional ...
    ("50%", "50"),
    ("50\\%", "0.5"),  # ... and Math-Verify also reads 50% as 0.5
    ("\\text{all real numbers}", "all real numbers"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\text{(C)}", "C"),
    ("025", "25"),
    ("27.0", "27"),
    ("4.5e33", "4.5 \\times 10^{33}"),
    ("3244047.1", "3244047.0999999996"),  # float noise in GSM-Hard targets
]

NOT_EQUIVALENT = [
    ("2", "3"),
    ("(1,2)", "(2,1)"),  # ordered pairs
    ("-3", "3"),
    ("(1,2]", "[1,2]"),
    ("3.14", "\\pi"),
    ("0.333", "\\frac{1}{3}"),
    ("0.5", "50"),  # percent rule: a bare 50 is not 0.5
    ("1000001", "1000000"),  # large integers must match exactly
    ("5x", "5"),
    ("5 x", "5"),  # a single letter is a variable, not a unit
    ("5 pi", "5"),
    ("1,2", "12"),  # commas that do not group by three are a list
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("x^2", "x^3"),
    ("A", "B"),
    ("", "5"),
]


def labelled(pairs: list[tuple[str, str]], expected: bool) -> list[tuple[str, str, bool]]:
    """(predicted, gold) pairs with the verdict they must get, so one test checks both lists of pairs."""
    return [(predicted, gold, expected) for predicted, gold in pairs]


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"), labelled(EQUIVALENT, True) + labelled(NOT_EQUIVALENT, False)
)
def test_answers_match_pairs(predicted: str, gold: str, expected: bool) -> None:
    assert answers_match(predicted, gold) is expected


# ----------------------------------------------------------------------------------------------
# Beyond Math-Verify: exact values, ±, radicals, powers, choice letters
# ----------------------------------------------------------------------------------------------

# Pairs marked "was wrong" were graded wrongly by the checker before the exact comparison, the ± expansion,
# the radical rule and the choice letters (measured); the others were right then and must stay right.
BEYOND_EQUIVALENT = [
    ("\\frac{1}{2004!}", "\\frac{1}{2004!}"),
    ("\\frac{1}{2004!}", "\\frac{1}{2004 \\cdot 2003!}"),
    ("\\pm 2", "2, -2"),
    ("\\pm 2", "-2, 2"),
    ("2, -2", "\\pm 2"),
    ("-2, 2", "\\pm 2"),
    ("x = \\pm 2", "2, -2"),
    ("±2", "-2, 2"),
    ("\\mp 2", "2, -2"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}"),
    ("\\frac{1 \\pm \\sqrt{5}}{2}", "\\frac{1+\\sqrt{5}}{2}, \\frac{1-\\sqrt{5}}{2}"),  # was wrong
    ("(\\pm 1, 2)", "(1, 2), (-1, 2)"),  # was wrong
    ("\\sqrt{\\frac{1}{n}}", "\\frac{1}{\\sqrt{n}}"),  # was wrong
    ("\\frac{1}{\\sqrt{n}}", "\\sqrt{\\frac{1}{n}}"),  # was wrong
    ("\\sqrt{\\frac{1}{2n}}", "\\frac{1}{\\sqrt{2n}}"),  # was wrong
    ("\\sqrt{\\frac{a}{b}}", "\\frac{\\sqrt{a}}{\\sqrt{b}}"),  # was wrong
    ("\\sqrt[3]{\\frac{1}{n}}", "\\frac{1}{\\sqrt[3]{n}}"),  # was wrong
    ("\\sqrt{\\frac{1}{3}}", "\\frac{1}{\\sqrt{3}}"),
    ("\\frac{1}{\\sqrt{3}}", "\\sqrt{\\frac{1}{3}}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("2^{10}", "1024"),
    ("1024", "2^{10}"),
    ("x^{2}", "x^2"),
    ("x^2", "x^{2}"),
    ("(2^3)^2", "64"),
    ("2^{n+1}", "2 \\cdot 2^n"),
    ("B", "B"),
    ("(B)", "B"),
    ("\\text{(B)}", "B"),
    ("B)", "B"),  # was wrong
    ("(B) 12", "B"),  # the letter with its option's text; was wrong
    ("B", "(B)"),
    ("b", "B"),
]

BEYOND_NOT_EQUIVALENT = [
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),  # was wrong: both are 0 in floating point
    ("\\frac{1}{2006!}", "\\frac{1}{2004!}"),  # was wrong
    ("2^{-2000}", "2^{-2001}"),  # was wrong
    ("10^{-20}", "10^{-21}"),  # was wrong
    ("e^{-100}", "e^{-101}"),  # was wrong
    ("\\frac{1}{10^{12}}", "\\frac{1}{10^{12}+1}"),  # was wrong
    ("\\frac{1}{1000000000000}", "\\frac{1}{1000000000001}"),  # was wrong: exact fractions, no tolerance
    ("\\{\\frac{1}{2004!}, 1\\}", "\\{\\frac{1}{2006!}, 1\\}"),  # was wrong
    ("(\\frac{1}{2004!}, 1)", "(\\frac{1}{2006!}, 1)"),  # was wrong
    ("\\pi", "\\frac{355}{113}"),
    ("2004!", "2006!"),
    ("10^{20}", "10^{20}+1"),
    ("\\pm 2", "2"),
    ("2", "\\pm 2"),
    ("\\pm 2", "-2"),
    ("\\pm 2", "2, -2, 0"),
    ("\\pm 3", "2, -2"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}"),
    ("\\sqrt{\\frac{1}{n}}", "\\frac{1}{\\sqrt{n+1}}"),
    ("\\sqrt{\\frac{1}{3}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\sqrt{x^2}", "x"),
    ("2^{10}", "1025"),
    ("2^{10}", "10^2"),
    ("x^{2}", "x^{3}"),
    ("(A)", "B"),
    ("A", "B"),
    ("\\text{(A)}", "B"),
    ("A)", "B"),
    ("(A) 12", "B"),
]


@pytest.mark.parametrize(
    ("predicted", "gold", "correct"), labelled(BEYOND_EQUIVALENT, True) + labelled(BEYOND_NOT_EQUIVALENT, False)
)
def test_beyond_math_verify(predicted: str, gold: str, correct: bool) -> None:
    assert grade(predicted, gold) == GradeResult(correct=correct, timed_out=False, decided=True)


def test_rules_report_what_they_cannot_decide() -> None:
    pairs = [
        ("12", "B"),  # a value against a choice letter: the options are only in the question
        ("0.\\overline{3}", "\\frac{1}{3}"),  # no parser reads a repeating decimal
        ("\\frac{1}{", "5"),  # a cut-off answer
        ("2", "3"),  # decided: both understood and different
        ("A", "B"),
        (None, "3"),  # no answer is decided: wrong, nothing to judge
    ]
    results = grade_many(pairs, workers=2)
    assert [result.decided for result in results] == [False, False, False, True, True, True]
    assert not any(result.correct or result.timed_out for result in results)


def test_none_prediction_is_wrong() -> None:
    assert answers_match(None, "5") is False
    assert grade(None, "5") == GradeResult(correct=False, timed_out=False)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        answers_match("1", "1", timeout=0)


# ----------------------------------------------------------------------------------------------
# Timeouts: a real slow comparison, from a thread and from worker processes
# ----------------------------------------------------------------------------------------------


def _timed_slow_grade() -> tuple[GradeResult, float]:
    """Grade the slow pair; the grading process is warmed up first so only the check is timed."""
    assert answers_match("1", "1")
    start = time.monotonic()
    result = grade(*SLOW_PAIR, timeout=TIMEOUT)
    return result, time.monotonic() - start


def _assert_timed_out(result: GradeResult, elapsed: float) -> None:
    assert result == GradeResult(correct=False, timed_out=True, decided=False)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK


def test_timeout_in_main_thread_and_recovery() -> None:
    _assert_timed_out(*_timed_slow_grade())
    # The killed grading process is replaced transparently.
    assert answers_match("1/2", "0.5")


def test_timeout_inside_a_thread() -> None:
    outcome: list[tuple[GradeResult, float]] = []
    thread = threading.Thread(target=lambda: outcome.append(_timed_slow_grade()))
    thread.start()
    thread.join(timeout=60)
    assert outcome, "the grading thread did not finish"
    _assert_timed_out(*outcome[0])


def test_timeout_inside_a_process_pool_worker() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        _assert_timed_out(*pool.submit(_timed_slow_grade).result(timeout=60))


def test_timeout_inside_a_daemonic_multiprocessing_worker() -> None:
    # multiprocessing.Pool workers are daemonic and may not start multiprocessing children;
    # the grading process is a plain subprocess, so this still works.
    with multiprocessing.Pool(processes=1) as pool:
        _assert_timed_out(*pool.apply(_timed_slow_grade))


def test_grade_many_counts_timeouts_and_keeps_order() -> None:
    pairs = [SLOW_PAIR, ("1,000", "1000"), (None, "3"), ("2", "3"), ("\\frac{1}{2}", "0.5")]
    start = time.monotonic()
    results = grade_many(pairs, workers=2, timeout=TIMEOUT)
    assert [result.correct for result in results] == [False, True, False, False, True]
    assert [result.timed_out for result in results] == [True, False, False, False, False]
    assert [result.decided for result in results] == [False, True, True, True, True]
    assert time.monotonic() - start < 30


def test_grade_many_empty() -> None:
    assert grade_many([]) == []


# ----------------------------------------------------------------------------------------------
# Self-consistency on reference solutions: the grader must accept the datasets' own answers
# ----------------------------------------------------------------------------------------------


def _report_and_score(name: str, pairs: list[tuple[str | None, str]]) -> float:
    results = grade_many(pairs)
    misses = [(predicted, gold, result) for (predicted, gold), result in zip(pairs, results) if not result.correct]
    score = 1 - len(misses) / len(pairs)
    print(f"\n{name}: {len(pairs) - len(misses)}/{len(pairs)} = {score:.2%}")
    for predicted, gold, result in misses:
        print(f"  miss: predicted={predicted!r} gold={gold!r} timed_out={result.timed_out}")
    return score


def source_rows(benchmarks_dir: Path, name: str) -> list[dict]:
    """The benchmark's test file as it is on disk, before load_benchmark reads it."""
    text = (benchmarks_dir / f"{name}_test.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_gsm8k_reference_solutions_grade_correct(benchmarks_dir: Path) -> None:
    rows = load_benchmark("gsm8k", data_dir=benchmarks_dir)
    raw = source_rows(benchmarks_dir, "gsm8k")
    pairs = []
    for row, source in zip(rows, raw):
        # Turn the reference solution into a model-style response ("... The answer is 1,234.") and
        # extract from it, so extraction, the raw #### text (commas included) and grading are all tested.
        body, final = source["answer"].rsplit("####", 1)
        pairs.append((extract_answer(f"{body}The answer is {final.strip()}."), row["gold"]))
    assert _report_and_score("gsm8k", pairs) >= 0.99


def test_math500_reference_solutions_grade_correct(benchmarks_dir: Path) -> None:
    rows = load_benchmark("math500", data_dir=benchmarks_dir)
    raw = source_rows(benchmarks_dir, "math500")
    pairs = [(extract_answer(source["solution"]), row["gold"]) for row, source in zip(rows, raw)]
    assert _report_and_score("math500", pairs) >= 0.99
