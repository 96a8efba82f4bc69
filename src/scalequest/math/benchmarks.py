"""Evaluation benchmarks: questions with their gold answers, bundled, from local JSONL files, or from the Hub.

`load_benchmark(name)` returns rows `{"id", "benchmark", "question", "gold"}` where `gold` is a string
ready for `answers_match`. Where the data comes from, in order (`benchmark_source` says which was used):

1. The copy bundled with the package, for `arithmetic` only: our own held-out one-step word problems
   (scripts/make_arithmetic.py), so the demo evaluates and decontaminates offline on any machine. Public
   benchmark files are not copied into the package.
2. `{data_dir}/{name}_test.jsonl`. `data_dir` is the argument, else the environment variable
   `SCALEQUEST_DATA_DIR`. A folder that holds a `benchmarks/` subfolder (the data root) works too.
3. Otherwise the public Hugging Face Hub copy named in `BENCHMARKS` (needs internet or a cached copy).
4. Otherwise `BenchmarkError`, saying where it looked and how to provide the data.

Each benchmark stores its gold answer differently; `BENCHMARKS[name].gold` turns a raw row into the
gold string (see the `_gold_*` functions below). A Hub copy may store it under other fields than the
files evaluation repositories distribute (`hub_question_field`, `hub_gold`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalequest import io
from scalequest.config import DataSource
from scalequest.math.answers import last_boxed

DATA_DIR_ENV = "SCALEQUEST_DATA_DIR"


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded; the message is one line saying why and what to do."""


# ----------------------------------------------------------------------------------------------
# Gold answers, one function per storage convention. Each returns None when the row has no gold.
# ----------------------------------------------------------------------------------------------


def _format_number(value: float | int) -> str | None:
    """A numeric gold as text: 27.0 -> "27", 3244047.0999999996 stays as is (float noise is graded away)."""
    if isinstance(value, bool) or not math.isfinite(value):
        return None
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _as_gold_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return _format_number(value)
    text = str(value).strip()
    return text or None


def _strip_dollars(text: str) -> str:
    """Drop `$` math delimiters but keep escaped dollar signs (`\\$`)."""
    kept = []
    for index, char in enumerate(text):
        if char == "$" and (index == 0 or text[index - 1] != "\\"):
            continue
        kept.append(char)
    return "".join(kept).strip()


def _gold_gsm8k(row: dict[str, Any]) -> str | None:
    # The solution ends with "#### 1,234"; the gold is the number, without thousands commas.
    answer = row.get("answer")
    if not isinstance(answer, str) or "####" not in answer:
        return None
    return answer.split("####")[-1].strip().replace(",", "") or None


def _gold_field(field: str) -> Callable[[dict[str, Any]], str | None]:
    """Gold stored as is in `field` (a string, or a number printed without a useless `.0`)."""

    def gold(row: dict[str, Any]) -> str | None:
        return _as_gold_text(row.get(field))

    return gold


def _gold_college_math(row: dict[str, Any]) -> str | None:
    # LaTeX, often wrapped in `$...$` as a whole ("$10-4 n$"); unwrap only that case and leave
    # mixed text such as "No solution : $\oslash$" to the grader, which ignores `$` anyway.
    text = _as_gold_text(row.get("answer"))
    if text and text.startswith("$") and text.endswith("$") and text.count("$") == 2 and len(text) > 2:
        text = text[1:-1].strip()
    return text or None


def _gold_olympiadbench(row: dict[str, Any]) -> str | None:
    # `final_answer` is a list holding one string such as "$\frac{1}{2 n+2}$" or "$69$,$84$".
    answers = row.get("final_answer")
    if isinstance(answers, str):
        answers = [answers]
    if not answers or not isinstance(answers, list):
        return None
    text = _as_gold_text(answers[0])
    if text is None:
        return None
    return _strip_dollars(text) or None


def _gold_minerva(row: dict[str, Any]) -> str | None:
    # No separate answer field: the gold is the last \boxed{} of the reference solution.
    solution = row.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


# ----------------------------------------------------------------------------------------------
# The benchmarks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how to read its question and gold answer."""

    name: str
    question_field: str
    gold: Callable[[dict[str, Any]], str | None]
    hub: DataSource | None  # public Hugging Face dataset (id, config, split), for users with internet
    hub_question_field: str | None = None  # where the Hub copy's fields differ from the local file's
    hub_gold: Callable[[dict[str, Any]], str | None] | None = None
    bundled: str | None = None  # name of the copy shipped with the package, if any

    @property
    def file_name(self) -> str:
        """The local JSONL in the data folder, named as evaluation repositories distribute it."""
        return f"{self.name}_test.jsonl"


_gold_answer = _gold_field("answer")
_SPECS = [
    BenchmarkSpec("gsm8k", "question", _gold_gsm8k, DataSource(hub="openai/gsm8k", config="main", split="test")),
    BenchmarkSpec("math500", "problem", _gold_answer, DataSource(hub="HuggingFaceH4/MATH-500", split="test")),
    BenchmarkSpec(
        "college_math", "question", _gold_college_math, DataSource(hub="di-zhang-fdu/College_Math_Test", split="test")
    ),
    BenchmarkSpec(
        "olympiadbench",
        "question",
        _gold_olympiadbench,
        DataSource(hub="Hothan/OlympiadBench", config="OE_TO_maths_en_COMP"),
    ),
    BenchmarkSpec("gsm_hard", "input", _gold_field("target"), DataSource(hub="reasoning-machines/gsm-hard")),
    # The local file is the OCW set as evaluation repositories ship it (problem + boxed solution); the Hub
    # copy holds the question and the final answer in their own fields.
    BenchmarkSpec(
        "minerva_math",
        "problem",
        _gold_minerva,
        DataSource(hub="math-ai/minervamath", split="test"),
        hub_question_field="question",
        hub_gold=_gold_answer,
    ),
    BenchmarkSpec("aime24", "problem", _gold_answer, DataSource(hub="HuggingFaceH4/aime_2024")),
    BenchmarkSpec("amc23", "question", _gold_answer, DataSource(hub="math-ai/amc23", split="test")),
    # Ours, bundled: one-step word problems held out from the demo's training data (no Hub copy).
    BenchmarkSpec("arithmetic", "question", _gold_gsm8k, None, bundled="arithmetic_test"),
]
BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def default_data_dir() -> Path | None:
    """`$SCALEQUEST_DATA_DIR` when set."""
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env) if from_env else None


def _local_file(data_dir: Path, file_name: str) -> Path:
    """The benchmark file in `data_dir`, or in its `benchmarks/` subfolder when given the data root."""
    direct = data_dir / file_name
    nested = data_dir / "benchmarks" / file_name
    return nested if not direct.is_file() and nested.is_file() else direct


def benchmark_source(name: str, data_dir: str | Path | None = None) -> DataSource:
    """Where `load_benchmark` reads `name` from: the bundled copy, else a file in `data_dir`, else the Hub."""
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise BenchmarkError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    if spec.bundled is not None:
        return DataSource(bundled=spec.bundled)
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    local_path = _local_file(folder, spec.file_name) if folder is not None else None
    return DataSource(path=local_path) if local_path is not None and local_path.is_file() else spec.hub


def _read_hub(name: str, spec: BenchmarkSpec, data_dir: str | Path | None) -> list[dict[str, Any]]:
    try:
        dataset = io.load_hub(spec.hub.hub, spec.hub.config, spec.hub.split, spec.hub.revision)
    except io.DataError as error:
        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        where = (
            f"no file {_local_file(folder, spec.file_name)}"
            if folder
            else f"no local data folder (${DATA_DIR_ENV} unset)"
        )
        raise BenchmarkError(
            f"benchmark {name!r}: {where}, and {error}; pass data_dir=... (or set ${DATA_DIR_ENV}) to a folder "
            f"holding {spec.file_name}"
        ) from None
    return [dict(row) for row in dataset]


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows `{"id": f"{name}-{index}", "benchmark", "question", "gold"}` of one benchmark.

    `index` is the row's position in the source, so ids stay stable when rows are skipped or `limit`
    is set. Rows without a question or gold answer are skipped with one warning giving the count.
    """
    source = benchmark_source(name, data_dir)
    spec = BENCHMARKS[name]
    if limit is not None and limit < 0:
        raise BenchmarkError(f"limit must be >= 0, got {limit}")
    question_field, read_gold = spec.question_field, spec.gold
    if source.hub is not None:
        raw_rows = _read_hub(name, spec, data_dir)
        question_field, read_gold = spec.hub_question_field or question_field, spec.hub_gold or read_gold
    else:
        try:
            raw_rows = list(io.read_file(io.bundled_file(source.bundled) if source.bundled else source.path))
        except io.DataError as error:
            raise BenchmarkError(f"benchmark {name!r}: {error}") from None

    rows: list[dict[str, Any]] = []
    skipped = 0
    for index, raw in enumerate(raw_rows):
        if limit is not None and len(rows) >= limit:
            break
        question = raw.get(question_field)
        gold = read_gold(raw)
        if not isinstance(question, str) or not question.strip() or not gold:
            skipped += 1
            continue
        rows.append({"id": f"{name}-{index}", "benchmark": name, "question": question, "gold": gold})
    if skipped:
        warnings.warn(f"benchmark {name!r}: skipped {skipped} row(s) without a question or gold answer", stacklevel=2)
    return rows
