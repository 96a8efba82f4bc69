"""Final answers of math responses: extraction, equivalence with a gold answer, and safe grading.

Three steps, each usable on its own:

1. `extract_answer(response)` pulls the final answer out of a model response: the last `\\boxed{...}`
   (or `\\fbox{...}`, or `\\boxed 5`), else the text after the last "The answer is", else after
   "final answer is", else None.
2. The equivalence check itself (`_equivalent`) asks Math-Verify first and then applies a few
   normalisations that Math-Verify lacks for grade-school answers:
     - currency and units: `\\$5`, `5 dollars`, `12 apples`, `\\text{5 cm}` all equal 5;
     - thousands separators: `1,000` equals 1000 (only when the commas group digits by three,
       so `1,2` stays a pair);
     - percent: a percent sign is optional, so `50%` equals 50. Math-Verify also reads `50%`
       as 0.5, and we keep that, so `50%` equals both 50 and 0.5 (but 50 never equals 0.5);
     - an assignment is the same as its value: `x=3` equals 3 (Math-Verify already does this
       for most cases; the number fallback covers the rest);
     - scientific notation: `4.5e33` equals `4.5 \\times 10^{33}`;
     - plain numbers are compared exactly as rationals; two non-integers may also differ by a
       relative 1e-9, which absorbs float noise such as GSM-Hard's `3244047.0999999996`.
   Text answers (`\\text{all real numbers}` vs `all real numbers`) match when their cleaned
   strings are identical.
3. The check can hang: sympy may take minutes on a hostile expression such as a huge power.
   Math-Verify's own timeout uses `signal.alarm`, which only works in the main thread of the main
   interpreter, so we switch it off (`parsing_timeout=None`, `timeout_seconds=None`) and run every
   check in a small persistent child process instead. The parent waits on the child's pipe with a
   deadline; when the deadline passes it kills the child, reports the item as timed out, and starts
   a fresh child on the next call. This works from any thread and inside any worker process
   (including daemonic `multiprocessing.Pool` workers, because the child is started with
   `subprocess`, not `multiprocessing`). POSIX only (it waits on pipes with `poll`).

Public API: `extract_answer`, `last_boxed`, `GradeResult`, `grade`, `answers_match`, `grade_many`.
"""

from __future__ import annotations

import atexit
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
from typing import IO

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

# Relative gap allowed between two non-integer numbers in the number fallback: float noise only.
_RELATIVE_TOLERANCE = Fraction(1, 10**9)


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


def _as_number(answer: str) -> Fraction | None:
    """The answer as an exact rational if it is a plain number once units, `%`, `x=` and `,` are gone."""
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
        return Fraction(text)  # exact: "0.1", "1/3", "4.5e33" all parse
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_equal(predicted: Fraction, gold: Fraction) -> bool:
    if predicted == gold:
        return True
    if predicted.denominator == 1 and gold.denominator == 1:
        return False  # two whole numbers must match exactly, however large
    return abs(predicted - gold) <= _RELATIVE_TOLERANCE * abs(gold)


def _math_verify_equal(predicted: str, gold: str) -> bool:
    """Math-Verify's verdict, with its signal-based timeouts switched off (we time out from outside)."""
    from math_verify import parse, verify

    # Math-Verify finds LaTeX inside delimiters; a box is the least ambiguous one. Existing `$`
    # delimiters (e.g. CollegeMath's "$(45,2),(-10,-9)$") would nest badly, so they go first.
    def as_boxed(answer: str) -> str:
        return "\\boxed{" + _UNESCAPED_DOLLAR.sub("", answer).strip() + "}"

    gold_parsed = parse(as_boxed(gold), parsing_timeout=None)
    predicted_parsed = parse(as_boxed(predicted), parsing_timeout=None)
    if not gold_parsed or not predicted_parsed:
        return False
    # verify() is not symmetric: gold goes first (it decides how `x=3` and intervals are read).
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def _equivalent(predicted: str, gold: str) -> bool:
    """Whether `predicted` states the same answer as `gold`. No timeout here: callers isolate it."""
    if _math_verify_equal(predicted, gold):
        return True
    predicted_number, gold_number = _as_number(predicted), _as_number(gold)
    if predicted_number is not None and gold_number is not None:
        return _numbers_equal(predicted_number, gold_number)
    predicted_clean, gold_clean = _clean(predicted), _clean(gold)
    if predicted_clean and predicted_clean == gold_clean:
        return True  # identical text answers, e.g. "\text{all real numbers}" and "all real numbers"
    if (predicted_clean, gold_clean) != (predicted.strip(), gold.strip()):
        return _math_verify_equal(predicted_clean, gold_clean)
    return False


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
    """Verdict for one (predicted, gold) pair. A timed-out check counts as incorrect."""

    correct: bool
    timed_out: bool = False


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
    one line back on its stdout ("1" or "0"). The child says "ready" once its imports are done, so
    the start-up time never eats into a check's timeout.
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
            return GradeResult(correct=False, timed_out=True)
        reply = process.stdout.readline()
        if not reply:
            # The child crashed on this item (e.g. killed for memory); it is not a timeout.
            log.warning("answer-grading process died while checking %r against %r", predicted[:80], gold[:80])
            self.close()
            return GradeResult(correct=False, timed_out=False)
        return GradeResult(correct=reply.strip() == b"1", timed_out=False)

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
    replaced. Count `timed_out` in the results to report how many checks gave up.
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

    _equivalent("1", "1")  # import and warm up sympy/Math-Verify before saying ready
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            correct = _equivalent(request["predicted"], request["gold"])
        except Exception:  # noqa: BLE001 - any failure of the checker means "not shown equal"
            correct = False
        replies.write("1\n" if correct else "0\n")
        replies.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--grading-worker"]:
    # Started as a script, Python put this file's folder first on sys.path; drop it so that our
    # sibling modules (benchmarks.py, ...) can never shadow a library module of the same name.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    _worker_main(int(sys.argv[2]))
