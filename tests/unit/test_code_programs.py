"""Programs in model responses (scalequest.code.programs): extraction, syntax, stated asserts, running tests
in the sandbox, and CodeT scores."""

from __future__ import annotations

import pytest

from scalequest.code.programs import asserts_in, codet_scores, extract_program, run_tests, syntax_problem


# ----------------------------------------------------------------------------------------------
# extract_program
# ----------------------------------------------------------------------------------------------


def test_extract_marked_block() -> None:
    response = "Here it is:\n```python\ndef f(x):\n    return x + 1\n```\nThis adds one."
    assert extract_program(response) == "def f(x):\n    return x + 1\n"


@pytest.mark.parametrize("tag", ["py", "python3", "Python", "python title=solution.py"])
def test_extract_other_python_tags(tag: str) -> None:
    assert extract_program(f"```{tag}\nx = 1\n```") == "x = 1\n"


def test_extract_unmarked_block_when_no_marked_one() -> None:
    assert extract_program("Try:\n```\nprint(2)\n```\n") == "print(2)\n"


def test_extract_prefers_marked_over_a_later_unmarked_block() -> None:
    response = "```python\ndef f():\n    return 1\n```\nOutput:\n```\n1\n```\n"
    assert extract_program(response) == "def f():\n    return 1\n"


def test_extract_takes_the_last_of_several_blocks() -> None:
    response = "Draft:\n```python\ndef f():\n    return 0\n```\nFixed:\n```python\ndef f():\n    return 1\n```\n"
    assert extract_program(response) == "def f():\n    return 1\n"


def test_extract_ignores_other_languages() -> None:
    assert extract_program("```bash\npip install numpy\n```\n```text\nhello\n```") is None


def test_extract_tilde_and_indented_fences() -> None:
    assert extract_program("~~~python\ny = 2\n~~~") == "y = 2\n"
    assert extract_program("1. Write it:\n   ```python\n   def g():\n       return 3\n   ```\n") == (
        "def g():\n    return 3\n"
    )


def test_extract_unterminated_final_block_only_when_it_compiles() -> None:
    complete = "```python\ndef f(x):\n    return x * 2\n"
    assert extract_program(complete) == "def f(x):\n    return x * 2\n"
    cut = "```python\ndef f(x):\n    return (x *"
    assert extract_program(cut) is None
    # A cut final block does not count; the complete block before it does.
    assert extract_program("```python\nz = 1\n```\nBetter:\n" + cut) == "z = 1\n"


def test_extract_no_block() -> None:
    assert extract_program("The function is f(x) = x + 1.") is None
    assert extract_program("") is None
    assert extract_program("```python\n\n```") is None


# ----------------------------------------------------------------------------------------------
# syntax_problem
# ----------------------------------------------------------------------------------------------


def test_syntax_problem() -> None:
    assert syntax_problem("def f(x):\n    return x\n") is None
    assert syntax_problem("a = 1\nb = 2\nc = (3\n") == "line 3: '(' was never closed"
    problem = syntax_problem("x = 1\ndef f(:\n    pass\n")
    assert problem is not None and problem.startswith("line 2: ")
    assert "\n" not in problem
    # The compiler, not only the parser: this would fail the same way when loaded.
    assert syntax_problem("return 5\n") == "line 1: 'return' outside function"
    assert syntax_problem("x = 1\0") is not None


# ----------------------------------------------------------------------------------------------
# asserts_in
# ----------------------------------------------------------------------------------------------

QUESTION = """Write a function `merge(a, b)` that merges two sorted lists. Your code should pass these tests:

```python
assert merge([1, 3], [2]) == [1, 2, 3]
assert merge(
    [1, 2],
    [3, 4],
) == [1, 2, 3, 4]
assert merge([], []) == [], \\
    "empty lists"
```

An assertion in prose is not a test, and neither is `merge([1], [])`. Also: `assert merge([5], []) == [5]`
assert merge([1, 3], [2]) == [1, 2, 3]
>>> assert merge([0], [0]) == [0, 0]
assert merge([1,
"""


def test_asserts_in_a_question() -> None:
    assert asserts_in(QUESTION) == [
        "assert merge([1, 3], [2]) == [1, 2, 3]",
        "assert merge(\n    [1, 2],\n    [3, 4],\n) == [1, 2, 3, 4]",
        'assert merge([], []) == [], \\\n    "empty lists"',
        "assert merge([0], [0]) == [0, 0]",
    ]


def test_asserts_in_text_without_tests() -> None:
    assert asserts_in("Assert that the list is sorted.\nassertions are good") == []


def test_asserts_in_each_statement_parses_alone() -> None:
    import ast

    for statement in asserts_in(QUESTION):
        tree = ast.parse(statement)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert)


# ----------------------------------------------------------------------------------------------
# codet_scores
# ----------------------------------------------------------------------------------------------


def test_codet_scores_hand_computed() -> None:
    # Groups: {0, 1} pass {t0, t1} -> 2 x 2 = 4; {2} passes {t0} -> 1 x 1 = 1; {3} passes nothing -> 0.
    passed = [[True, True, False], [True, True, False], [True, False, False], [False, False, False]]
    assert codet_scores(passed) == pytest.approx([4 / 12, 4 / 12, 1 / 12, 0.0])
    # Everyone agreeing on passing everything is the maximum.
    assert codet_scores([[True, True]] * 3) == pytest.approx([1.0, 1.0, 1.0])
    # A lone program passing all 2 tests (1 x 2 = 2) loses to three agreeing on one test (3 x 1 = 3).
    scores = codet_scores([[True, True], [True, False], [True, False], [True, False]])
    assert scores == pytest.approx([2 / 8, 3 / 8, 3 / 8, 3 / 8])


def test_codet_scores_edge_cases() -> None:
    assert codet_scores([]) == []
    assert codet_scores([[], []]) == [0.0, 0.0]
    with pytest.raises(ValueError):
        codet_scores([[True], [True, False]])


# ----------------------------------------------------------------------------------------------
# run_tests (in the sandbox)
# ----------------------------------------------------------------------------------------------

TESTS = ["assert double(1) == 2", "assert double(2) == 4", "assert double(3) == 6", "assert double(-1) == -2"]


def test_run_tests_correct_wrong_hanging_broken(sandbox: None) -> None:
    correct = (
        "def double(x):\n    return 2 * x\n\n"
        'print(\'@@scalequest-fake@@{"load": "error"}\')\n'  # prints must not confuse the report
        "if __name__ == '__main__':\n    input()\n"  # not run: the program is loaded as a module
    )
    wrong = "def double(x):\n    return x + 1\n"  # right only for x = 1
    hanging = "def double(x):\n    while x == 3:\n        pass\n    return 2 * x\n"
    catches_everything = (
        "def double(x):\n    while x == 2:\n        try:\n            pass\n"
        "        except Exception:\n            pass\n    return 2 * x\n"
    )
    runs = run_tests([correct, wrong, hanging, catches_everything], TESTS, timeout=1.0, workers=2)
    assert [run.status for run in runs] == ["ok"] * 4
    assert runs[0].passed == [True, True, True, True]
    assert runs[0].reason is None and runs[0].test_reasons == [None] * 4
    assert runs[1].passed == [True, False, False, False]
    assert "AssertionError" in runs[1].test_reasons[1]
    assert runs[2].passed == [True, True, False, True]
    assert "budget" in runs[2].test_reasons[2] and runs[2].test_kinds == [None, None, "timeout", None]
    assert runs[3].passed == [True, False, True, True]


def test_run_tests_process_killed_by_one_test_fails_only_that_test(sandbox: None) -> None:
    # os._exit inside a test takes the whole process down; the later tests rerun in a fresh process.
    program = "import os\ndef double(x):\n    if x == 2:\n        os._exit(3)\n    return 2 * x\n"
    (run,) = run_tests([program], TESTS, timeout=2.0)
    assert run.status == "ok"
    assert run.passed == [True, False, True, True]
    assert run.test_reasons[1] is not None and "test 1" in run.test_reasons[1]


def test_run_tests_programs_that_do_not_load(sandbox: None) -> None:
    broken = "def double(x)\n    return 2 * x\n"
    raises = "def double(x):\n    return 2 * x\n\nraise RuntimeError('no config file')\n"
    slow_load = "while True:\n    pass\n"
    runs = run_tests([broken, raises, slow_load], TESTS, timeout=1.0, workers=2)
    assert [run.status for run in runs] == ["syntax", "error", "timeout"]
    assert runs[0].reason == "line 1: expected ':'"
    assert runs[1].reason == "line 4: RuntimeError: no config file"
    for run in runs:
        assert run.passed == [False] * len(TESTS)
        assert all(reason.startswith("not run") for reason in run.test_reasons)


def test_run_tests_without_tests_or_programs(sandbox: None) -> None:
    assert run_tests([], TESTS) == []
    (run,) = run_tests(["x = 1\n"], [])
    assert run.status == "ok" and run.passed == []
