"""Answer checking and benchmark loading for math evaluation.

- `extract_answer` / `last_boxed`: the final answer of a model response.
- `grade`, `answers_match`, `grade_many`: Math-Verify equivalence plus grade-school normalisations,
  each check run in a child process under a timeout that works from any thread or worker process.
- `BENCHMARKS`, `load_benchmark`: evaluation sets with their gold answers (bundled, local JSONL or the Hub).
"""

from scalequest.math.answers import GradeResult, answers_match, extract_answer, grade, grade_many, last_boxed
from scalequest.math.benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    BenchmarkSpec,
    benchmark_source,
    default_data_dir,
    load_benchmark,
)

__all__ = [
    "BENCHMARKS",
    "BenchmarkError",
    "BenchmarkSpec",
    "GradeResult",
    "answers_match",
    "benchmark_source",
    "default_data_dir",
    "extract_answer",
    "grade",
    "grade_many",
    "last_boxed",
    "load_benchmark",
]
