"""Programs in model responses, and checking them against tests in the sandbox.

1. `extract_program(response)` takes the program out of a response (its last Python code block).
2. `syntax_problem(program)` says in one line why a program cannot be compiled, if it cannot.
3. `asserts_in(question)` finds the example tests a programming question states as `assert` lines.
4. `run_tests(programs, tests)` runs every program against every test in the sandbox, one process per
   program, and returns which tests each program passes.
5. `codet_scores(passed)` ranks programs by CodeT dual agreement over those pass vectors.

Model-written code never runs in this process: `run_tests` sends each program, wrapped in a small harness
(`_HARNESS`), to `scalequest.code.sandbox.execute_many`.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalequest.code.sandbox import Execution

PYTHON_TAGS = ("python", "py", "python3")
# Seconds added to a harness process's budget for interpreter start-up and reporting.
_GRACE_SECONDS = 5.0
# Longest multi-line assert `asserts_in` will try to assemble, in lines.
_MAX_ASSERT_LINES = 40
# Kind of a test that never ran (the program did not load, or the process died before reaching it).
NOT_RUN = "not_run"

_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


# ----------------------------------------------------------------------------------------------
# Programs in text
# ----------------------------------------------------------------------------------------------


def syntax_problem(program: str) -> str | None:
    """None when the program compiles, else one line such as "line 3: invalid syntax".

    It compiles rather than only `ast.parse`s, because the compiler also rejects code the parser accepts
    (`return` outside a function, `break` outside a loop), which would fail the same way when loaded.
    Nothing is executed.
    """
    try:
        with warnings.catch_warnings():  # e.g. SyntaxWarning for "\d" in a string; not our concern here
            warnings.simplefilter("ignore")
            compile(program, "<program>", "exec", dont_inherit=True)
    except SyntaxError as error:  # IndentationError and TabError included
        return f"line {error.lineno}: {error.msg}" if error.lineno else error.msg
    except ValueError as error:  # "source code string cannot contain null bytes"
        return str(error).splitlines()[0]
    except (RecursionError, MemoryError):
        return "too deeply nested to compile"
    return None


@dataclass(frozen=True)
class _Block:
    tag: str  # the fence's language tag, lower case ("" when unmarked)
    code: str
    terminated: bool


def _code_blocks(text: str) -> list[_Block]:
    """Fenced code blocks (``` or ~~~) in order; the last one may lack its closing fence."""
    blocks: list[_Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence = opening["fence"]
        info = opening["info"].strip()
        tag = info.split()[0].strip("{}.").lower() if info else ""
        indent = len(lines[index - 1]) - len(lines[index - 1].lstrip())
        body: list[str] = []
        terminated = False
        while index < len(lines):
            line = lines[index]
            index += 1
            stripped = line.strip()
            # A closing fence: the same character, at least as long, nothing else on the line.
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                terminated = True
                break
            # A block indented inside a list item is indented as a whole; remove the fence's indentation.
            body.append(line[indent:] if line[:indent].strip() == "" else line)
        blocks.append(_Block(tag, "\n".join(body) + "\n", terminated))
    return blocks


def extract_program(response: str) -> str | None:
    """The program in a model response, or None when it holds none.

    The program is the last fenced block marked python, py or python3; when no block is marked so, the
    last unmarked block (blocks marked with another language, such as `text` or `bash`, are never taken).
    Models often write a draft and then the final version, hence the last block. A final block without
    its closing fence (the model hit its token limit) counts only if it compiles, since a program cut
    mid-statement is not the model's answer; when it does not, the block before it is taken instead.
    Blocks holding only whitespace are ignored.
    """
    blocks = [
        block
        for block in _code_blocks(response)
        if block.code.strip() and (block.terminated or syntax_problem(block.code) is None)
    ]
    marked = [block for block in blocks if block.tag in PYTHON_TAGS]
    unmarked = [block for block in blocks if block.tag == ""]
    chosen = marked or unmarked
    return chosen[-1].code if chosen else None


def _is_one_assert(source: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert)


def asserts_in(text: str) -> list[str]:
    """The `assert` statements a text states, each complete on its own, in order, without repeats.

    Programming questions give their examples as Python assert lines, in a code block or in the prose,
    sometimes spread over several lines (a long literal, a backslash). An assert starts on a line whose
    first word is `assert` (after indentation, a `>>> ` prompt or an opening backtick) and ends at the
    first following line where the text so far parses as exactly one assert statement. The
    continuation lines keep their own indentation, which does not matter inside brackets.
    """
    lines = text.splitlines()
    found: list[str] = []
    index = 0
    while index < len(lines):
        first = lines[index].strip()
        if first.startswith(">>> "):
            first = first[4:].lstrip()
        if first.startswith("`") and not first.startswith("```"):
            first = first.lstrip("`")
        if not re.match(r"assert\b", first):
            index += 1
            continue
        statement = None
        for end in range(index, min(index + _MAX_ASSERT_LINES, len(lines))):
            candidate = "\n".join([first, *(line.rstrip() for line in lines[index + 1 : end + 1])]).rstrip()
            for variant in (candidate, candidate.rstrip("`").rstrip()):  # `assert f(1) == 2` in prose
                if _is_one_assert(variant):
                    statement = variant
                    break
            if statement is not None:
                index = end + 1
                break
        if statement is None:
            index += 1
        elif statement not in found:
            found.append(statement)
    return found


# ----------------------------------------------------------------------------------------------
# Running programs against tests
# ----------------------------------------------------------------------------------------------

# The program a sandbox process runs: load the solution, then run each test on its own, reporting one
# marked JSON line per step on a copy of stdout. The solution's own stdout and stderr go to /dev/null,
# so its prints can neither be mistaken for reports nor fill the output limit. The solution is loaded as
# a module named `__solution__` (so `if __name__ == "__main__":` demos and input() loops do not run, as in
# HumanEval's own harness, and dataclasses or pickle find their module). Each step has its own budget,
# enforced with `setitimer`; the exception it raises derives from BaseException so `except Exception` in
# the solution does not swallow it. `os._exit` at the end skips atexit hooks and threads it left running.
_HARNESS = r'''
import json, os, signal, sys, types

_job = json.loads(__JOB__)
_mark = _job["marker"]
_report = os.fdopen(os.dup(1), "w", encoding="utf-8")
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
os.dup2(_null, 2)


def _emit(**event):
    _report.write(_mark + json.dumps(event) + "\n")
    _report.flush()


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


signal.signal(signal.SIGALRM, _alarm)


def _describe(error, filename):
    line = None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == filename:
            line = trace.tb_lineno
        trace = trace.tb_next
    try:
        text = str(error).strip()
    except Exception:
        text = ""
    text = text.splitlines()[0][:200] if text else ""
    where = f"line {line}: " if line else ""
    return where + type(error).__name__ + (f": {text}" if text else "")


def _run(source, filename, namespace, budget):
    """(kind, reason) of running `source`; kind is None when it ran to its end within `budget` seconds."""
    try:
        try:
            code = compile(source, filename, "exec", dont_inherit=True)
            signal.setitimer(signal.ITIMER_REAL, budget)
            exec(code, namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return "timeout", f"ran over its {budget:g} s budget"
    except SyntaxError as error:
        return "syntax", f"line {error.lineno}: {error.msg}"
    except MemoryError:
        return "memory", "MemoryError"
    except BaseException as error:
        return "error", _describe(error, filename)
    return None, None


_module = types.ModuleType("__solution__")
sys.modules["__solution__"] = _module
_kind, _reason = _run(_job["program"], "<program>", _module.__dict__, _job["timeout"])
_emit(load=_kind or "ok", reason=_reason)
if _kind is None:
    for _index in range(_job["start"], len(_job["tests"])):
        _kind, _reason = _run(_job["tests"][_index], f"<test {_index}>", _module.__dict__, _job["timeout"])
        _emit(test=_index, kind=_kind, reason=_reason)
        if _kind is not None and _job["stop_at_failure"]:
            break
    _emit(done=True)
_report.flush()
os._exit(0)
'''


@dataclass
class TestRun:
    """One program's result against a list of tests.

    status: "ok" when the program loaded (whatever its tests did); otherwise why it did not: "syntax",
        "error" (it raised while loading), "timeout", "memory", "output" or "killed".
    passed: one bool per test; all False when the program did not load.
    reason: one line on why the program did not load; None when it loaded.
    test_reasons: per test, None when it passed, else one line on why not (e.g. "AssertionError",
        "ran over its 5 s budget"); feedback for a model that repairs its program.
    test_kinds: per test, None when it passed, else how it failed: "error", "timeout", "memory", "syntax",
        a sandbox status ("output", "killed") or "not_run".
    """

    __test__ = False  # not a pytest test class, despite the name

    status: str
    passed: list[bool]
    reason: str | None = None
    test_reasons: list[str | None] = field(default_factory=list)
    test_kinds: list[str | None] = field(default_factory=list)


@dataclass
class JobOutcome:
    """What the harness reported for one job (used by `run_tests` and `benchmarks.check_completions`).

    status and reason: whether the program loaded, as in `TestRun`. kinds[i]: None when test i passed,
    else how it failed: "error" (an assertion or exception), "syntax", "timeout", "memory", a sandbox
    status ("output", "killed") when the process was stopped during it, or NOT_RUN. reasons[i]: one line.
    """

    status: str
    reason: str | None
    kinds: list[str | None]
    reasons: list[str | None]


def _harness(program: str, tests: list[str], start: int, timeout: float, marker: str, stop_at_failure: bool) -> str:
    job = {
        "marker": marker,
        "program": program,
        "tests": tests,
        "start": start,
        "timeout": timeout,
        "stop_at_failure": stop_at_failure,
    }
    return _HARNESS.replace("__JOB__", repr(json.dumps(job)), 1)


def _events(stdout: str, marker: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.startswith(marker):
            try:
                events.append(json.loads(line[len(marker) :]))
            except json.JSONDecodeError:
                continue  # a line cut short when the process was killed
    return events


def _death(execution: Execution, during: str) -> tuple[str, str]:
    """(kind, reason) for a sandbox process that ended before the harness reported the step `during`."""
    if execution.status == "ok":
        return "error", f"the process exited while {during}"
    if execution.status == "error":
        return "error", f"the process died while {during} (exit code {execution.returncode})"
    return execution.status, f"the process was stopped while {during} ({execution.status})"


def run_jobs(
    jobs: list[tuple[str, list[str]] | None],
    timeout: float,
    memory_mb: int,
    workers: int | None,
    stop_at_failure: bool,
) -> list[JobOutcome | None]:
    """Run each (program, tests) job in its own sandbox process, in parallel; None jobs stay None.

    A test that the harness cannot stop (a hang inside C code, a crash) takes its process down; the tests
    after it then run in a fresh process, so it fails only itself (unless `stop_at_failure`). Each round
    starts every job later than the last, so this ends.
    """
    from scalequest.code.sandbox import execute_many

    marker = f"@@scalequest-{secrets.token_hex(8)}@@"
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    pending: dict[int, int] = {}  # job index -> first test to run
    for index, job in enumerate(jobs):
        if job is not None:
            outcomes[index] = JobOutcome("ok", None, [NOT_RUN] * len(job[1]), [None] * len(job[1]))
            pending[index] = 0
    while pending:
        order = list(pending)
        sources = [_harness(*jobs[i], pending[i], timeout, marker, stop_at_failure) for i in order]
        most_tests = max(len(jobs[i][1]) - pending[i] for i in order)
        budget = timeout * (most_tests + 1) + _GRACE_SECONDS
        executions = execute_many(sources, timeout=budget, memory_mb=memory_mb, workers=workers)
        next_pending: dict[int, int] = {}
        for index, execution in zip(order, executions):
            start, outcome, n_tests = pending[index], outcomes[index], len(jobs[index][1])
            load, done, last = None, False, start - 1
            for event in _events(execution.stdout, marker):
                if "load" in event:
                    load = event
                elif "test" in event:
                    outcome.kinds[event["test"]], outcome.reasons[event["test"]] = event["kind"], event["reason"]
                    last = event["test"]
                elif event.get("done"):
                    done = True
            if load is None or load["load"] != "ok":
                if load is None:
                    kind, reason = _death(execution, "loading the program")
                else:
                    kind, reason = load["load"], load["reason"]
                if start == 0:
                    outcome.status, outcome.reason = kind, reason
                else:  # it loaded before; a test from the previous round left it unable to load again
                    outcome.reasons[start:] = [f"not run: the program failed to reload ({reason})"] * (n_tests - start)
                continue
            if done or last + 1 >= n_tests:
                continue
            crashed = last + 1
            outcome.kinds[crashed], outcome.reasons[crashed] = _death(execution, f"running test {crashed}")
            if not stop_at_failure and crashed + 1 < n_tests:
                next_pending[index] = crashed + 1
        pending = next_pending
    return outcomes


def run_tests(
    programs: list[str],
    tests: list[str],
    timeout: float = 5.0,
    memory_mb: int = 1024,
    workers: int | None = None,
) -> list[TestRun]:
    """Run every program against every test, each program in its own sandbox process, in parallel.

    The process loads the program (as module `__solution__`, so its `__main__` block does not run), then
    runs each test in the program's namespace, each test, and the loading, under its own `timeout`
    seconds: one hanging test fails only itself. Tests share the namespace, so a test that changes a
    global affects the tests after it, as when they are written one after another in a file.
    A program that does not compile is not run at all ("syntax").
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    tests = list(tests)
    problems = [syntax_problem(program) for program in programs]
    jobs = [(program, tests) if problem is None else None for program, problem in zip(programs, problems)]
    outcomes = run_jobs(jobs, timeout, memory_mb, workers, stop_at_failure=False)
    runs = []
    for problem, outcome in zip(problems, outcomes):
        if outcome is None:
            reasons = [f"not run: {problem}"] * len(tests)
            runs.append(TestRun("syntax", [False] * len(tests), problem, reasons, [NOT_RUN] * len(tests)))
            continue
        not_loaded = None if outcome.status == "ok" else f"not run: the program did not load ({outcome.reason})"
        reasons = [
            (not_loaded or "not run") if kind == NOT_RUN and reason is None else reason
            for kind, reason in zip(outcome.kinds, outcome.reasons)
        ]
        passed = [kind is None for kind in outcome.kinds]
        runs.append(TestRun(outcome.status, passed, outcome.reason, reasons, list(outcome.kinds)))
    return runs


def codet_scores(passed: list[list[bool]]) -> list[float]:
    """CodeT dual-agreement score of each program, in [0, 1], from its pass vector over shared tests.

    CodeT (Chen et al. 2022, "CodeT: Code Generation with Generated Tests") ranks sampled programs with
    tests that are themselves model-written, so neither side is trusted alone: programs that pass exactly
    the same set of tests form a consensus group, and a group scores (number of programs in it) x (number
    of tests they pass). A program agreed on by many others and passing many tests ranks first; a lone
    program passing everything, or many programs passing nothing, does not. Every program gets its
    group's score divided by (number of programs x number of tests), the largest possible score, so
    scores from different questions are comparable; all scores are 0 when there are no tests.

    Example: vectors [T, T], [T, T], [T, F] give groups {0, 1} scoring 2 x 2 = 4 and {2} scoring 1 x 1 = 1,
    so scores [4/6, 4/6, 1/6].
    """
    if not passed:
        return []
    n_tests = len(passed[0])
    if any(len(vector) != n_tests for vector in passed):
        raise ValueError("every program's pass vector must cover the same tests")
    if n_tests == 0:
        return [0.0] * len(passed)
    groups = Counter(tuple(bool(x) for x in vector) for vector in passed)
    largest = len(passed) * n_tests
    return [groups[key] * sum(key) / largest for key in (tuple(bool(x) for x in vector) for vector in passed)]
