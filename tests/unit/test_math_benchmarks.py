"""Benchmark loading (scalequest.math.benchmarks), from the shared data and from broken inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl
from scalequest.math import BENCHMARKS, BenchmarkError, load_benchmark

EXPECTED_NAMES = {"gsm8k", "math500", "college_math", "olympiadbench", "gsm_hard", "minerva_math", "aime24", "amc23"}


def test_known_names() -> None:
    assert set(BENCHMARKS) == EXPECTED_NAMES | {"arithmetic"}  # arithmetic: ours, bundled for the demo


def test_the_bundled_arithmetic_benchmark_loads_with_gold() -> None:
    rows = load_benchmark("arithmetic")
    assert len(rows) == 100 and rows[0]["id"] == "arithmetic-0" and rows[0]["gold"].isdigit()


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_benchmark_loads_with_gold(name: str, benchmarks_dir: Path) -> None:
    source_rows = sum(1 for line in (benchmarks_dir / f"{name}_test.jsonl").read_text().splitlines() if line.strip())
    rows = load_benchmark(name, data_dir=benchmarks_dir)
    assert len(rows) >= 0.99 * source_rows
    for row in rows:
        assert set(row) == {"id", "benchmark", "question", "gold"}
        assert row["benchmark"] == name
        assert row["id"].startswith(f"{name}-")
        assert isinstance(row["question"], str) and row["question"].strip()
        assert isinstance(row["gold"], str) and row["gold"].strip()
    assert len({row["id"] for row in rows}) == len(rows)


@pytest.mark.parametrize(
    ("name", "index", "gold"),
    [
        ("gsm8k", 0, "18"),
        ("math500", 0, "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("college_math", 0, "10-4 n"),  # "$10-4 n$" unwrapped
        ("olympiadbench", 1, "\\frac{1}{2 n+2}"),  # final_answer[0] without "$"
        ("gsm_hard", 0, "-9867630"),  # float target printed without ".0"
        ("gsm_hard", 7, "3244047.0999999996"),
        ("minerva_math", 0, "1.6"),  # last \boxed{} of the solution
        ("aime24", 0, "204"),
        ("amc23", 0, "27"),  # 27.0 in the file
    ],
)
def test_gold_conventions(name: str, index: int, gold: str, benchmarks_dir: Path) -> None:
    rows = load_benchmark(name, data_dir=benchmarks_dir)
    assert rows[index]["gold"] == gold
    assert rows[index]["id"] == f"{name}-{index}"


def test_gsm8k_gold_has_no_thousands_commas(benchmarks_dir: Path) -> None:
    golds = [row["gold"] for row in load_benchmark("gsm8k", data_dir=benchmarks_dir)]
    assert "2125" in golds  # "#### 2,125" in the file
    assert not any("," in gold for gold in golds)


def test_limit(benchmarks_dir: Path) -> None:
    rows = load_benchmark("math500", data_dir=benchmarks_dir, limit=3)
    assert [row["id"] for row in rows] == ["math500-0", "math500-1", "math500-2"]
    assert load_benchmark("math500", data_dir=benchmarks_dir, limit=0) == []


def test_data_root_and_environment_variable(benchmarks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The data root (holding benchmarks/) works as well as the benchmarks folder itself.
    assert len(load_benchmark("aime24", data_dir=benchmarks_dir.parent)) == 30
    monkeypatch.setenv("SCALEQUEST_DATA_DIR", str(benchmarks_dir))
    assert len(load_benchmark("aime24")) == 30


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(BenchmarkError) as error:
        load_benchmark("gsm9k")
    message = str(error.value)
    assert "gsm9k" in message
    for name in EXPECTED_NAMES:
        assert name in message


def test_benchmark_error_is_a_value_error() -> None:
    assert issubclass(BenchmarkError, ValueError)


def test_missing_file_offline_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; setting it only helps before that.
    if os.environ.get("HF_HUB_OFFLINE") != "1" and "huggingface_hub" in sys.modules:
        pytest.skip("run with HF_HUB_OFFLINE=1 (huggingface_hub is already imported online)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BenchmarkError) as error:
        load_benchmark("aime24", data_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "aime24_test.jsonl") in message
    assert "HuggingFaceH4/aime_2024" in message
    assert "data_dir=" in message


def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "amc23_test.jsonl", [{"question": "q", "answer": "1"}])
    with path.open("a", encoding="utf-8") as file:
        file.write('{"question": "broken", "answer": \n')
    with pytest.raises(BenchmarkError, match=r"amc23_test\.jsonl:2:"):
        load_benchmark("amc23", data_dir=tmp_path)


def test_non_object_line_is_an_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "amc23_test.jsonl", [[1, 2]])
    with pytest.raises(BenchmarkError, match=r"amc23_test\.jsonl:1:"):
        load_benchmark("amc23", data_dir=tmp_path)


def test_rows_without_gold_are_skipped_with_a_warning(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "minerva_math_test.jsonl",
        [
            {"problem": "one", "solution": "1+1=\\boxed{2}"},
            {"problem": "no box", "solution": "just text"},
            {"problem": "no solution"},
            {"problem": "big", "solution": "... \\boxed{1234}"},
        ],
    )
    with pytest.warns(UserWarning, match="skipped 2 row"):
        rows = load_benchmark("minerva_math", data_dir=tmp_path)
    assert [(row["id"], row["gold"]) for row in rows] == [("minerva_math-0", "2"), ("minerva_math-3", "1234")]


def test_olympiadbench_skips_empty_final_answer(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "olympiadbench_test.jsonl",
        [
            {"question": "a", "final_answer": ["$69$,$84$"]},
            {"question": "b", "final_answer": []},
            {"question": "c", "final_answer": [""]},
            {"question": "d"},
        ],
    )
    with pytest.warns(UserWarning, match="skipped 3 row"):
        rows = load_benchmark("olympiadbench", data_dir=tmp_path)
    assert [row["gold"] for row in rows] == ["69,84"]
