"""Final answers of math responses: extraction, equivalence with a gold answer, and safe grading.

Three steps, each usable on its own:

1. `extract_answer(response)` pulls the final answer out of a model response: the last `\\boxed{...}`
   (or `\\fbox{...}`, or `\\boxed 5`), else the text after the last "The answer is", else after
   "final answer is", else None.
2. The equivalence check itself (`_verdict`, `_equivalent`) says equal, different, or cannot decide:
     - exact first: two constants (`\\frac{1}{2004!}`, `2^{-2000}`, `e^{-100}`, or intervals, tuples and
       sets of them) are compared with sympy as exact rationals, others (`\\sqrt{2}`, `\\pi/2`) at 60
       significant digits relative to their size; only when that cannot apply is Math-Verify asked, whose
       numeric check rounds (it calls 1/2004! and 1/2006! equal);
     - ±: `\\pm 2` stands for the set {2, -2}, so it equals `2, -2` and `-2, 2` but not `2`
       (`\\frac{1 \\pm \\sqrt{5}}{2}` and `(\\pm 1, 2)` are expanded the same way);
     - radicals with variables: powers of quotients and products are spread out before sympy compares,
       so `\\sqrt{\\frac{1}{n}}` equals `\\frac{1}{\\sqrt{n}}` (positive bases, as such answers are meant);
     - multiple choice: when the gold is a letter A-E (`B`, `(B)`), `B`, `(B)`, `B)`, `\\text{(B)}` and
       `(B) 12` all name B; any other letter is wrong, and an answer that names no letter is undecided;
   then the normalisations that Math-Verify lacks for grade-school answers:
     - currency and units: `\\$5`, `5 dollars`, `12 apples`, `\\text{5 cm}` all equal 5;
     - thousands separators: `1,000` equals 1000 (only when the commas group digits by three,
       so `1,2` stays a pair);
     - percent: a percent sign is optional, so `50%` equals 50. Math-Verify also reads `50%`
       as 0.5, and we keep that, so `50%` equals both 50 and 0.5 (but 50 never equals 0.5);
     - an assignment is the same as its value: `x=3` equals 3 (Math-Verify already does this
       for most cases; the number fallback covers the rest);
     - scientific notation: `4.5e33` equals `4.5 \\times 10^{33}`;
     - plain numbers are compared exactly as rationals; only when one of them is written as a decimal
       may they differ by a relative 1e-9, which absorbs float noise such as GSM-Hard's
       `3244047.0999999996` (exact fractions such as 1/10^12 and 1/(10^12+1) never collide).
   Text answers (`\\text{all real numbers}` vs `all real numbers`) match when their cleaned
   strings are identical. A pair is undecided (`GradeResult.decided` False) when no rule matched and
   one side is read by neither Math-Verify nor the number rules (`0.\\overline{3}`, a cut-off `\\frac{1}{`),
   or the gold is a choice letter and the answer names none; a judge model may settle those.
3. The check can hang: sympy may take minutes on a hostile expression such as a huge power.
   Math-Verify's own timeout uses `signal.alarm`, which only works in the main thread of the main
   interpreter, so we switch it off (`parsing_timeout=None`, `timeout_seconds=None`) and run every
   check in a small persistent child process instead. The parent waits on the child's pipe with a
   deadline; when the deadline passes it kills the child, reports the item as timed out, and starts
   a fresh child on the next call; a timed-out (or crashed) check is undecided too. This works from
   any thread and inside any worker process (including daemonic `multiprocessing.Pool` workers,
   because the child is started with `subprocess`, not `multiprocessing`). POSIX only (it waits on
   pipes with `poll`).

Public API: `extract_answer`, `last_boxed`, `GradeResult`, `grade`, `answers_match`, `grade_many`.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from queue import Queue
from typing import IO, Any

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# 1. Extraction
# --------------------------------------------------------------------------------------------------

# `\boxed` or `\fbox`, but not a longer command such as `\boxedsomething`.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_THE_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)
_FINAL_ANSWER_IS = re.compile(r"final answer is", re.IGNORECASE)
# A `$` that is a math delimiter, not an escaped dollar sign `\$`.
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _box_argument(text: str, start: int) -> str | None:
    """The argument of the box command that ends at `start`, or None if there is none (or it is cut off)."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        j = i
        while j < len(text):
            char = text[j]
            if char == "\\":
                j += 2  # an escaped character such as \{ or \} never opens or closes the box
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
            j += 1
        return None  # the closing brace never came: a truncated response
    if i > start:
        # `\boxed 5`: the argument runs to the next space or math delimiter.
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0).rstrip(".") if match else None
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty `\\boxed{...}` / `\\fbox{...}` / `\\boxed x` in `text`."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        argument = _box_argument(text, match.end())
        if argument:
            return argument
    return None


def _answer_after(phrase: re.Pattern[str], response: str) -> str | None:
    """The answer written after the last occurrence of `phrase`, on the same line and sentence."""
    matches = list(phrase.finditer(response))
    if not matches:
        return None
    # The answer follows on the same line, or on the next one after "The answer is:".
    tail = response[matches[-1].end() :].lstrip(" \t:\n").split("\n", 1)[0].strip()
    # The sentence ends at a period followed by a space; a period inside a number (3.5) does not end it.
    tail = re.split(r"\.\s", tail, maxsplit=1)[0]
    tail = _UNESCAPED_DOLLAR.sub("", tail)
    tail = tail.strip().strip("*").strip().rstrip(".").strip()
    return tail or None


def extract_answer(response: str) -> str | None:
    """The final answer of a model response, or None when it states none.

    Order: the last `\\boxed{}` (nested braces handled; `\\fbox{}` and `\\boxed 5` too), else the text
    after the last "The answer is", else after the last "final answer is". The text forms are cut
    at the end of the line / sentence, lose a trailing period and their `$` delimiters.
    """
    if not response:
        return None
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    answer = _answer_after(_THE_ANSWER_IS, response)
    if answer is not None:
        return answer
    return _answer_after(_FINAL_ANSWER_IS, response)


# --------------------------------------------------------------------------------------------------
# 2. Equivalence (runs inside the grading child process, without any timeout of its own)
# --------------------------------------------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT = re.compile(r"\s*\\?%$")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\w*\s*=\s*")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Trailing words after a number are units ("12 apples", "5 dollars", "3 km/h"). Every word must start
# with a letter and the first must have two letters or more, so "5 x" (5 times x) stays an expression.
_TRAILING_UNITS = re.compile(r"(?<=[\d.])\s+(?P<first>[A-Za-z]{2,})[A-Za-z./^{}\d]*(?:\s+[A-Za-z][A-Za-z./^{}\d]*)*$")
_NOT_UNITS = {"pi", "sqrt", "mod", "times", "cdot", "over", "plus", "minus", "root"}
_TIMES_TEN = re.compile(
    r"^(?P<mantissa>[-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:\\times|\\cdot|\*|x)"
    r"\s*10\s*\^\s*\{?\s*(?P<exponent>[-+]?\d+)\s*\}?$"
)
_LATEX_FRACTION = re.compile(r"^(?P<sign>-?)\\frac\s*\{\s*(?P<num>\d+)\s*\}\s*\{\s*(?P<den>\d+)\s*\}$")
# A gold answer that is a choice letter: "B", "(B)".
_GOLD_CHOICE = re.compile(r"^\(?([A-E])\)?$")
# A predicted choice: "B", "(B)", "B)", "B.", or the letter with its option's text after it: "(B) 12", "B) 12".
_PREDICTED_CHOICE = re.compile(r"^(?:\(([A-Ea-e])\)|([A-Ea-e])\))(?:\s.*)?$|^\(?([A-Ea-e])\.?$")
# ±, ∓ and their LaTeX commands; an answer with one stands for the set of its values.
_PLUS_MINUS = re.compile(r"\\pm(?![A-Za-z])|\\mp(?![A-Za-z])|±|∓")
_MOST_SIGNS = 3  # at most 2**3 sign combinations are tried
# A "+" left at the start of an expression by expanding ± ("+2", "(+1, 2)", "x = +2") is dropped.
_UNARY_PLUS = re.compile(r"(^|[(\[{,=]|\\left[(\[])\s*\+\s*")

# Relative gap allowed between two numbers in the number fallback when one of them is written as a decimal:
# float noise only. Numbers written exactly (integers, fractions) must be equal.
_RELATIVE_TOLERANCE = Fraction(1, 10**9)
# Two exact constants that are not both rational (sqrt(2), pi, e^-100, ...) are compared at this many
# significant digits, relative to their size, so huge or tiny values never collide.
_EXACT_DIGITS = 60
_EXACT_RELATIVE_GAP = 30  # equal when they agree to 30 significant digits
# Exact evaluation is skipped for numbers with more digits than this (10^{10^{10}}); Math-Verify decides those.
_MOST_EXACT_DIGITS = 100_000
_MOST_SET_ELEMENTS = 20

# A verdict of the rules: True (equivalent), False (shown different, or both sides understood and no rule
# makes them equal), None (the rules cannot decide: a side no parser understands, or a choice letter
# against something that is no letter).
Verdict = bool | None


def _clean(answer: str) -> str:
    """A plain form of an answer for the fallbacks: no `$`, `\\text{}` wrappers, spacing macros or `\\left`."""
    text = answer.strip()
    text = _UNESCAPED_DOLLAR.sub("", text)
    text = text.replace("\\$", "")  # a currency sign carries no mathematical meaning
    text = _TEXT_WRAPPER.sub(r"\1", text)
    text = text.replace("\\!", "").replace("{,}", ",")
    for spacing in ("\\,", "\\;", "\\:", "\\ ", "~"):
        text = text.replace(spacing, " ")
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)
    text = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", text)
    return re.sub(r"\s+", " ", text).strip()


def _as_number(answer: str) -> tuple[Fraction, bool] | None:
    """The answer as an exact rational if it is a plain number once units, `%`, `x=` and `,` are gone, with
    whether it was written as a decimal (`0.1`, `4.5e33`: maybe rounded) rather than exactly (`3`, `1/3`)."""
    text = _clean(answer)
    text = _ASSIGNMENT.sub("", text)
    text = _DEGREES.sub("", text).strip()
    text = _PERCENT.sub("", text)
    units = _TRAILING_UNITS.search(text)
    if units and units.group("first").lower() not in _NOT_UNITS:
        text = text[: units.start()]
    for word in ("dollars", "dollar", "USD"):  # currency written before the number ("USD 5")
        text = text.removeprefix(word).strip()
    text = text.strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    power = _TIMES_TEN.match(text)
    if power:
        text = f"{power.group('mantissa')}e{power.group('exponent')}"
    fraction = _LATEX_FRACTION.match(text)
    if fraction:
        text = f"{fraction.group('sign')}{fraction.group('num')}/{fraction.group('den')}"
    text = text.replace(" ", "")
    if not text or not re.fullmatch(r"[-+]?[\d./eE+-]+", text):
        return None
    try:
        return Fraction(text), bool(re.search(r"[.eE]", text))  # exact: "0.1", "1/3", "4.5e33" all parse
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_equal(predicted: tuple[Fraction, bool], gold: tuple[Fraction, bool]) -> bool:
    (predicted_value, predicted_decimal), (gold_value, gold_decimal) = predicted, gold
    if predicted_value == gold_value:
        return True
    if not (predicted_decimal or gold_decimal):
        return False  # two exactly written numbers (1/10^12 and 1/(10^12+1)) must match exactly
    return abs(predicted_value - gold_value) <= _RELATIVE_TOLERANCE * abs(gold_value)


# --- exact comparison with sympy (before Math-Verify, whose numeric check rounds) ---------------------------


def _too_many_digits(expr: Any) -> bool:
    """Whether evaluating `expr` exactly could build a number too big to hold (a power tower, 10^6!)."""
    import sympy

    def digits(value: Any) -> float:  # log10 |value|, without overflowing a float
        size = abs(sympy.N(value, 15))
        return float(sympy.log(size, 10).evalf(15)) if size != 0 else 0.0

    try:
        nodes = list(sympy.preorder_traversal(expr))
        for node in nodes:  # factorials first: the size of a power of one needs its value
            if isinstance(node, sympy.factorial) and not node.args[0].is_number:
                return True
            if isinstance(node, sympy.factorial) and abs(sympy.N(node.args[0], 15)) > _MOST_EXACT_DIGITS / 5:
                return True
        for node in nodes:
            if isinstance(node, sympy.Pow) and node.base.is_number and node.exp.is_number:
                if abs(sympy.N(node.exp, 15)) * abs(digits(node.base)) > _MOST_EXACT_DIGITS:
                    return True
    except (TypeError, ValueError, OverflowError):
        return True
    return False


def _exact_number(expr: Any) -> Any:
    """`expr` evaluated exactly (factorials, powers, percent) if it is a finite constant without floats, else None."""
    import sympy

    if not isinstance(expr, sympy.Expr) or not expr.is_number or expr.has(sympy.Float) or _too_many_digits(expr):
        return None
    value = expr.doit()
    return value if value.is_finite else None


def _all_of(verdicts: list[Verdict]) -> Verdict:
    """Several parts compared: equal when all are, different when one is, else undecided."""
    if any(verdict is False for verdict in verdicts):
        return False
    return True if all(verdict is True for verdict in verdicts) else None


def _exact_verdict(predicted: Any, gold: Any) -> Verdict:
    """Exact comparison of two parsed answers that are constants (or intervals, tuples or sets of them).

    Rationals (1/2004!, 2^{-2000}, 50%) are compared as exact fractions, other constants (sqrt(2), pi/2)
    at 60 significant digits relative to their size. None when either side is no such constant (it has
    variables or a float, or is too big to evaluate): Math-Verify decides those.
    """
    import sympy

    if isinstance(predicted, sympy.Interval) and isinstance(gold, sympy.Interval):
        if (predicted.left_open, predicted.right_open) != (gold.left_open, gold.right_open):
            return None
        return _all_of([_exact_verdict(predicted.start, gold.start), _exact_verdict(predicted.end, gold.end)])
    if isinstance(predicted, sympy.Tuple) and isinstance(gold, sympy.Tuple):
        if len(predicted) != len(gold):
            return None
        return _all_of([_exact_verdict(p, g) for p, g in zip(predicted.args, gold.args)])
    if isinstance(predicted, sympy.FiniteSet) and isinstance(gold, sympy.FiniteSet):
        if len(predicted) != len(gold) or len(gold) > _MOST_SET_ELEMENTS:
            return None
        table = [[_exact_verdict(p, g) for g in gold.args] for p in predicted.args]
        if any(verdict is None for row in table for verdict in row):
            return None
        # Exact equality is transitive, so matching each element to the first equal one left is enough.
        unmatched = set(range(len(gold)))
        for row in table:
            match = next((j for j in sorted(unmatched) if row[j]), None)
            if match is None:
                return False
            unmatched.discard(match)
        return True
    predicted_value, gold_value = _exact_number(predicted), _exact_number(gold)
    if predicted_value is None or gold_value is None:
        return None
    if predicted_value.is_Rational and gold_value.is_Rational:
        return bool(predicted_value == gold_value)
    try:
        gap = abs(sympy.N(predicted_value - gold_value, _EXACT_DIGITS))
        size = max(abs(sympy.N(predicted_value, _EXACT_DIGITS)), abs(sympy.N(gold_value, _EXACT_DIGITS)))
        return bool(gap <= size * sympy.Rational(1, 10**_EXACT_RELATIVE_GAP))
    except TypeError:  # a value sympy cannot evaluate to a number
        return None


def _spread_powers(expr: Any) -> Any:
    """`expr` with powers of products and reciprocals spread out: sqrt(a/b) -> sqrt(a)/sqrt(b), (1/n)^(1/3) ->
    n^(-1/3). True for positive bases, which is how answers with radicals are meant."""
    import sympy

    for _ in range(3):
        expr = sympy.expand_power_base(expr, force=True)
        expr = expr.replace(
            lambda node: isinstance(node, sympy.Pow) and isinstance(node.base, sympy.Pow) and node.base.exp == -1,
            lambda node: sympy.Pow(node.base.base, -node.exp),
        )
    return expr


def _radicals_equal(predicted: Any, gold: Any) -> bool:
    """Whether two expressions with variables and radicals agree once powers are spread (sqrt(1/n) = 1/sqrt(n))."""
    import sympy

    if not (isinstance(predicted, sympy.Expr) and isinstance(gold, sympy.Expr)):
        return False
    if not (predicted.free_symbols or gold.free_symbols):
        return False  # constants were compared exactly already
    radicals = [
        node
        for expr in (predicted, gold)
        for node in sympy.preorder_traversal(expr)
        if isinstance(node, sympy.Pow) and node.exp.is_Rational and not node.exp.is_Integer
    ]
    if not radicals:
        return False
    difference = _spread_powers(predicted) - _spread_powers(gold)
    return difference == 0 or sympy.simplify(difference) == 0


def _parse(answer: str) -> list:
    """Math-Verify's readings of an answer (sympy objects and strings), with its signal-based timeout off."""
    from math_verify import parse

    # Math-Verify finds LaTeX inside delimiters; a box is the least ambiguous one. Existing `$`
    # delimiters (e.g. CollegeMath's "$(45,2),(-10,-9)$") would nest badly, so they go first.
    try:
        return parse("\\boxed{" + _UNESCAPED_DOLLAR.sub("", answer).strip() + "}", parsing_timeout=None)
    except Exception:  # noqa: BLE001 - an answer no parser reads
        return []


def _sympy_verdict(predicted: str, gold: str) -> tuple[bool, bool, bool]:
    """(equal, predicted parsed, gold parsed): exact comparison, then Math-Verify, then spread radicals.

    When the exact comparison finds two constants different, Math-Verify is not asked: its numeric check
    rounds, so it would call 1/2004! and 1/2006! equal.
    """
    from math_verify import verify

    gold_parsed, predicted_parsed = _parse(gold), _parse(predicted)
    gold_expr = next((item for item in gold_parsed if not isinstance(item, str)), None)
    predicted_expr = next((item for item in predicted_parsed if not isinstance(item, str)), None)
    parsed = (predicted_expr is not None, gold_expr is not None)
    if gold_expr is not None and predicted_expr is not None:
        exact = _exact_verdict(predicted_expr, gold_expr)
        if exact is not None:
            return exact, *parsed
    # verify() is not symmetric: gold goes first (it decides how `x=3` and intervals are read).
    if gold_parsed and predicted_parsed and verify(gold_parsed, predicted_parsed, timeout_seconds=None):
        return True, *parsed
    if gold_expr is not None and predicted_expr is not None and _radicals_equal(predicted_expr, gold_expr):
        return True, *parsed
    return False, *parsed


def _choice_letter(answer: str) -> str | None:
    match = _PREDICTED_CHOICE.match(answer)
    return next(letter for letter in match.groups() if letter).upper() if match else None


def _rule_verdict(predicted: str, gold: str) -> Verdict:
    """The verdict of the rules on one pair, ± not expanded."""
    if not predicted.strip():
        return False
    predicted_clean, gold_clean = _clean(predicted), _clean(gold)
    if predicted_clean and predicted_clean == gold_clean:
        return True  # identical once cleaned, e.g. "\text{all real numbers}" and "all real numbers"
    gold_choice = _GOLD_CHOICE.match(gold_clean)
    if gold_choice:
        # A multiple-choice gold: the prediction names a letter, or the rules cannot tell (it may be the
        # option's value, and the options are only in the question).
        letter = _choice_letter(predicted_clean)
        return None if letter is None else letter == gold_choice.group(1)
    equal, predicted_parsed, gold_parsed = _sympy_verdict(predicted, gold)
    if equal:
        return True
    predicted_number, gold_number = _as_number(predicted), _as_number(gold)
    if predicted_number is not None and gold_number is not None:
        return _numbers_equal(predicted_number, gold_number)
    if (predicted_clean, gold_clean) != (predicted.strip(), gold.strip()):
        equal, clean_predicted_parsed, clean_gold_parsed = _sympy_verdict(predicted_clean, gold_clean)
        if equal:
            return True
        predicted_parsed, gold_parsed = predicted_parsed or clean_predicted_parsed, gold_parsed or clean_gold_parsed
    predicted_parsed = predicted_parsed or predicted_number is not None
    gold_parsed = gold_parsed or gold_number is not None
    return False if predicted_parsed and gold_parsed else None


def _sign_variants(answer: str) -> list[str]:
    """An answer with ± as the list of its values: "\\pm 2" -> ["2, -2"]; "1 \\pm \\sqrt{2}" -> ["1 + \\sqrt{2},
    1 - \\sqrt{2}"]. Several ± are read both as one linked sign (± with ∓) and as independent signs."""
    signs = _PLUS_MINUS.findall(answer)
    if not signs or len(signs) > _MOST_SIGNS:
        return []

    def spelled(choices: tuple[str, ...]) -> str:
        it = iter(choices)

        def one(match: re.Match[str]) -> str:
            sign = next(it)
            return sign if match.group(0) in ("\\pm", "±") else {"+": "-", "-": "+"}[sign]

        return _UNARY_PLUS.sub(r"\1", _PLUS_MINUS.sub(one, answer))

    linked = ", ".join(spelled((sign,) * len(signs)) for sign in "+-")
    variants = [linked]
    if len(signs) > 1 and not any(sign in ("\\mp", "∓") for sign in signs):
        variants.append(", ".join(spelled(combination) for combination in itertools.product("+-", repeat=len(signs))))
    return variants


def _verdict(predicted: str, gold: str) -> Verdict:
    """Whether `predicted` states the same answer as `gold`: True, False, or None when the rules cannot decide.

    No timeout here: callers isolate it.
    """
    verdict = _rule_verdict(predicted, gold)
    if verdict is True:
        return True
    predicted_variants, gold_variants = _sign_variants(predicted), _sign_variants(gold)
    if not predicted_variants and not gold_variants:
        return verdict
    expanded = [_rule_verdict(p, g) for p in predicted_variants or [predicted] for g in gold_variants or [gold]]
    if any(v is True for v in expanded):
        return True
    return False if verdict is None and any(v is False for v in expanded) else verdict


def _equivalent(predicted: str, gold: str) -> bool:
    """Whether `predicted` states the same answer as `gold` (an undecided pair is not). No timeout here."""
    return _verdict(predicted, gold) is True


# --------------------------------------------------------------------------------------------------
# 3. Grading with a timeout, in a child process
# --------------------------------------------------------------------------------------------------

# How long a fresh grading process may take to import sympy and Math-Verify. Not part of any timeout.
_STARTUP_TIMEOUT_S = 120.0
# Address-space cap of a grading process, so that a runaway expression (a power with a huge exponent)
# fails with MemoryError instead of exhausting the machine before the timeout strikes.
_WORKER_MEMORY_LIMIT_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class GradeResult:
    """Verdict for one (predicted, gold) pair. A timed-out check counts as incorrect.

    `decided` is False when the rules could not tell either way, so `correct` (False) is only a default:
    the check timed out or crashed, one side is something no parser reads (Math-Verify and the number
    rules both fail on it), or the gold is a choice letter and the prediction names none. Such a pair
    can go to a judge model; a missing prediction (None) is decided: wrong.
    """

    correct: bool
    timed_out: bool = False
    decided: bool = True


def _wait_readable(stream: IO[bytes], timeout: float) -> bool:
    """Whether `stream` has data (or end-of-file) within `timeout` seconds.

    poll() rather than select(): select() fails outright on descriptors above 1023, which a busy
    server process can easily hold.
    """
    poller = select.poll()
    poller.register(stream, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class _GradingProcess:
    """One child Python process that runs `_equivalent` on request; killed and replaced when it hangs.

    Protocol: one JSON line per request on the child's stdin ({"predicted": ..., "gold": ...}),
    one line back on its stdout ("1" equal, "0" not equal, "?" the rules cannot decide). The child says
    "ready" once its imports are done, so the start-up time never eats into a check's timeout.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        # Run this very file as a script rather than `-m scalequest.math.answers`: the child then needs
        # neither the parent's sys.path nor the rest of the package.
        command = [sys.executable, os.path.abspath(__file__), "--grading-worker", str(os.getpid())]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        ready = _wait_readable(self._process.stdout, _STARTUP_TIMEOUT_S)
        line = self._process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(
                f"the answer-grading process failed to start (no 'ready' within {_STARTUP_TIMEOUT_S:.0f}s); "
                "is math-verify installed for this Python? Its error, if any, is on stderr above"
            )

    def check(self, predicted: str, gold: str, timeout: float) -> GradeResult:
        request = (json.dumps({"predicted": predicted, "gold": gold}) + "\n").encode("utf-8")
        for attempt in (1, 2):
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(request)
                self._process.stdin.flush()
                break
            except BrokenPipeError:
                # The child died between two checks (killed from outside): start a new one, once.
                self.close()
                if attempt == 2:
                    raise
        process = self._process
        assert process is not None and process.stdout is not None
        if not _wait_readable(process.stdout, timeout):
            self.close()  # still computing: kill it, the next check starts a fresh one
            return GradeResult(correct=False, timed_out=True, decided=False)
        reply = process.stdout.readline()
        if not reply:
            # The child crashed on this item (e.g. killed for memory); it is not a timeout.
            log.warning("answer-grading process died while checking %r against %r", predicted[:80], gold[:80])
            self.close()
            return GradeResult(correct=False, timed_out=False, decided=False)
        return GradeResult(correct=reply.strip() == b"1", timed_out=False, decided=reply.strip() != b"?")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # a pipe whose other end is already gone


# The process used by `grade` / `answers_match`, shared by all threads of this process.
_shared_process: _GradingProcess | None = None
_shared_lock = threading.Lock()


def _forget_shared_process_after_fork() -> None:
    # A forked child must not talk to its parent's grading process (both would read the same pipe);
    # it starts its own on first use. The lock is replaced too, in case another thread held it.
    global _shared_process, _shared_lock
    _shared_process = None
    _shared_lock = threading.Lock()


def _close_shared_process() -> None:
    if _shared_process is not None:
        _shared_process.close()


os.register_at_fork(after_in_child=_forget_shared_process_after_fork)
atexit.register(_close_shared_process)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def grade(predicted: str | None, gold: str, timeout: float = 5.0) -> GradeResult:
    """Check one answer against the gold answer within `timeout` seconds (from any thread or process).

    Checks from several threads of one process share one grading process and run one at a time;
    use `grade_many` to grade in parallel.
    """
    global _shared_process
    _check_timeout(timeout)
    if predicted is None:
        return GradeResult(correct=False)
    with _shared_lock:
        if _shared_process is None:
            _shared_process = _GradingProcess()
        return _shared_process.check(str(predicted), str(gold), timeout)


def answers_match(predicted: str | None, gold: str, timeout: float = 5.0) -> bool:
    """Whether `predicted` states the same answer as `gold`. None and timed-out checks are False."""
    return grade(predicted, gold, timeout).correct


def grade_many(
    pairs: list[tuple[str | None, str]], workers: int | None = None, timeout: float = 5.0
) -> list[GradeResult]:
    """Grade many (predicted, gold) pairs on a pool of grading processes; results keep the input order.

    `workers` grading processes (default: os.cpu_count()) run in parallel, each fed by one thread of
    this process; every item still gets its own `timeout`, and a process that runs past it is
    replaced. Count `timed_out` in the results to report how many checks gave up, and `decided` for how many
    the rules could not settle.
    """
    _check_timeout(timeout)
    if not pairs:
        return []
    to_check = sum(1 for predicted, _ in pairs if predicted is not None)
    count = max(1, min(workers or os.cpu_count() or 1, to_check))
    idle: Queue[_GradingProcess] = Queue()
    processes = [_GradingProcess() for _ in range(count)]
    for process in processes:
        idle.put(process)

    def grade_one(pair: tuple[str | None, str]) -> GradeResult:
        predicted, gold = pair
        if predicted is None:
            return GradeResult(correct=False)
        process = idle.get()  # one thread per process at a time
        try:
            return process.check(str(predicted), str(gold), timeout)
        finally:
            idle.put(process)

    try:
        with ThreadPoolExecutor(max_workers=count) as threads:
            return list(threads.map(grade_one, pairs))
    finally:
        for process in processes:
            process.close()


# --------------------------------------------------------------------------------------------------
# The grading child process
# --------------------------------------------------------------------------------------------------


def _exit_when_parent_dies(parent_pid: int) -> None:
    # If the parent is killed while we grind through a hopeless expression, nobody would ever kill us:
    # notice the re-parenting and leave.
    import time

    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _worker_main(parent_pid: int) -> None:

    # Keep the real stdout for replies only; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > _WORKER_MEMORY_LIMIT_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_LIMIT_BYTES, hard))
    except (ImportError, ValueError, OSError):
        pass  # no cap on this platform; the timeout still applies
    # Math-Verify logs (never `warnings.warn`s) that its timeout is off, which we know, and every unparsable
    # answer; other libraries' warnings stay visible.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    threading.Thread(target=_exit_when_parent_dies, args=(parent_pid,), daemon=True).start()

    # Import and warm up sympy and Math-Verify before saying ready, along every path of the check (identical
    # answers take a shortcut that needs neither).
    _verdict("\\sqrt{\\frac{1}{x}}", "0.5")
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            verdict = _verdict(request["predicted"], request["gold"])
        except Exception:  # noqa: BLE001 - any failure of the checker means "not shown equal", and undecided
            verdict = None
        replies.write({True: "1\n", False: "0\n", None: "?\n"}[verdict])
        replies.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--grading-worker"]:
    # Started as a script, Python put this file's folder first on sys.path; drop it so that our
    # sibling modules (benchmarks.py, ...) can never shadow a library module of the same name.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    _worker_main(int(sys.argv[2]))
