"""difficulty-label (paper §2.3): fail rates of a solver on questions with known answers.

For questions with known answers (GSM8K / MATH train), a solver samples `n` solutions (paper:
DeepSeekMath-7B-RL); `fail_rate` = share graded wrong (no final answer = wrong), `sample_correct` the grade of
each sample. `difficulty-train` learns these labels and `filter-difficulty` uses the result; the difficulty
buckets all three report live here. With `keep_responses` the same solver pass also feeds `reward-train`
(correct and incorrect samples of a question make its preference pairs).

For programming tasks (domain code, gold_format tests) the known answer is a list of `assert` lines: each
sampled program is run on them in the sandbox (scalequest.code) and is correct when it passes all of them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from scalequest import io
from scalequest.config import (
    DataSource,
    EngineConfig,
    Grading,
    HFEngineConfig,
    RowStageConfig,
    Section,
    SolverPrompt,
    sampling_config,
)
from scalequest.engines import load_engine
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.templates import solve_prompt, solve_stops, uses_chat_template

log = logging.getLogger(__name__)


BUCKETS = ("very_easy", "easy", "medium", "hard", "very_hard")
Bucket = Literal["very_easy", "easy", "medium", "hard", "very_hard"]


def bucket_of(score: float) -> str:
    """Quintile of [0, 1] a score falls in; scores outside [0, 1] count in the end buckets."""
    return BUCKETS[min(len(BUCKETS) - 1, max(0, math.floor(score * len(BUCKETS))))]


def histogram(scores: list[float]) -> dict[str, int]:
    counts = Counter(bucket_of(s) for s in scores)
    return {name: counts.get(name, 0) for name in BUCKETS}


LabelSampling = sampling_config("LabelSampling", temperature=0.7, top_p=0.95, max_new_tokens=2048, n=8)


def _gold_gsm8k(value: Any) -> str | None:
    from scalequest.math import BENCHMARKS

    return BENCHMARKS["gsm8k"].gold({"answer": value})  # "... #### 1,234" -> "1234"


def _gold_boxed(value: Any) -> str | None:
    from scalequest.math import last_boxed

    return last_boxed(value) if isinstance(value, str) else None  # MATH solutions box their answer


def _gold_plain(value: Any) -> str | None:
    from scalequest.math import BENCHMARKS

    return BENCHMARKS["math500"].gold({"answer": value})  # the field is the answer itself (27.0 -> "27")


def _gold_tests(value: Any) -> list[str] | None:
    if isinstance(value, list) and value and all(isinstance(test, str) and test.strip() for test in value):
        return value
    return None


GOLD_FORMATS = {
    "gsm8k": (_gold_gsm8k, "a solution ending in '#### N'"),
    "boxed": (_gold_boxed, "a solution with the answer in \\boxed{}"),
    "plain": (_gold_plain, "the answer itself"),
    "tests": (_gold_tests, "a list of assert statements"),
}


@dataclass(frozen=True)
class ProgramGrade:
    """A program's grade, shaped like a math grade: correct when it passed every test of its row."""

    correct: bool
    timed_out: bool


class LabelSource(Section):
    """A further source of questions with known answers, with its own fields and gold format."""

    input: DataSource = Field(..., description="Questions with known answers (a path, {bundled: ...} or {hub: ...}).")
    question_field: str = Field("question", description="Field holding the question (MATH: problem).")
    answer_field: str = Field("answer", description="Field holding the known answer or solution (MATH: solution).")
    gold_format: Literal["gsm8k", "boxed", "plain", "tests"] = Field(
        "gsm8k", description="How answer_field holds the gold: gsm8k ('#### N'), boxed (MATH), plain or tests (code)."
    )
    limit: int | None = Field(None, ge=1, description="Label only the first N questions of this source.")


class DifficultyLabelConfig(SolverPrompt, Grading, RowStageConfig):
    """Label questions with known answers by a solver's fail rate over n sampled solutions."""

    stage = "difficulty-label"

    input: DataSource = Field(
        ...,
        description="Questions with known answers: a path, {bundled: arithmetic_train}, or {hub: openai/gsm8k, config: "
        "main}.",
    )
    question_field: str = Field("question", description="Field holding the question (MATH: problem).")
    answer_field: str = Field("answer", description="Field holding the known answer or solution (MATH: solution).")
    gold_format: Literal["gsm8k", "boxed", "plain", "tests"] = Field(
        "gsm8k",
        description="How answer_field holds the gold: gsm8k = solution ending in '#### N'; boxed = solution with "
        "\\boxed{} (MATH); plain = the answer itself; tests = a list of assert lines (domain code).",
    )
    test_timeout: float = Field(5.0, gt=0, description="gold_format tests: seconds allowed per test.")
    limit: int | None = Field(None, ge=1, description="Label only the first N questions of `input`.")
    more_sources: list[LabelSource] = Field(
        default_factory=list,
        description="Further sources labelled with `input`, each {input, question_field, answer_field, gold_format, "
        "limit} (the paper: GSM8K and MATH train).",
    )
    engine: EngineConfig = Field(default_factory=HFEngineConfig, description="The solver (paper: DeepSeekMath-7B-RL).")
    sampling: LabelSampling = Field(
        default_factory=LabelSampling,
        description="Solver sampling; sampling.n = solutions per question (default 8, temperature 0.7).",
    )
    keep_responses: bool = Field(False, description="Store the solver's full responses in each row (large).")
    shard_size: int = Field(256, ge=1, description="Questions per output shard; a shard is the unit of resume.")

    @model_validator(mode="after")
    def one_domain(self) -> "DifficultyLabelConfig":
        # Programs are graded by their tests and math answers by the grader: one stage labels one kind.
        formats = {self.gold_format, *(source.gold_format for source in self.more_sources)}
        if self.domain == "code" and formats != {"tests"}:
            raise ValueError("domain code grades programs by their tests: set gold_format: tests for every source")
        if self.domain == "math" and "tests" in formats:
            raise ValueError("gold_format tests holds programming tests: set domain: code")
        return self


class LabelDifficulty(RowStage):
    config: DifficultyLabelConfig

    def sources(self) -> list[LabelSource]:
        config = self.config
        first = LabelSource(
            input=config.input,
            question_field=config.question_field,
            answer_field=config.answer_field,
            gold_format=config.gold_format,
            limit=config.limit,
        )
        return [first, *config.more_sources]

    def input_fingerprint(self) -> str | None:
        return "-".join(io.input_fingerprint(source.input) for source in self.sources())

    # Questions are read once, cut to `limit` and checked for a gold answer before any shard runs.
    def labelled_rows(self) -> list[dict]:
        """Rows {id, question, gold} of every source; a row without a question or a readable gold answer, or an id
        found twice, is an error."""
        if hasattr(self, "_rows"):
            return self._rows
        rows, seen = [], set()
        for source in self.sources():
            read_gold, expected = GOLD_FORMATS[source.gold_format]
            taken = 0
            for row in io.read_rows(source.input):
                if source.limit is not None and taken >= source.limit:
                    break
                taken += 1
                question = row.get(source.question_field)
                if not isinstance(question, str) or not question.strip():
                    raise io.DataError(
                        f"input {source.input}: row {row['id']} has no question in field {source.question_field!r}"
                    )
                if row.get(source.answer_field) is None:
                    raise io.DataError(
                        f"input {source.input}: row {row['id']} has no field {source.answer_field!r} with its known "
                        "answer (set answer_field to the field holding the gold answer)"
                    )
                gold = read_gold(row[source.answer_field])
                if not gold:
                    raise io.DataError(
                        f"input {source.input}: row {row['id']}: field {source.answer_field!r} is not {expected} "
                        f"(gold_format {source.gold_format}); set gold_format or answer_field"
                    )
                if row["id"] in seen:
                    raise io.DataError(f"input {source.input}: duplicate id {row['id']!r}; ids must be unique")
                seen.add(row["id"])
                rows.append({"id": row["id"], "question": question, "gold": gold})
        self._rows = rows
        return rows

    def count_input_rows(self) -> int:
        return len(self.labelled_rows())

    def input_shards(self) -> Iterator[Shard]:
        rows, size = self.labelled_rows(), self.config.shard_size
        for index, start in enumerate(range(0, len(rows), size)):
            yield Shard(index, rows[start : start + size])

    def check(self) -> None:
        if self.config.domain == "code":  # programs are graded in the sandbox; never unconfined
            from scalequest.code import check_available

            check_available()

    def setup(self) -> None:
        self.engine = load_engine(self.config.engine)
        self.chat = uses_chat_template(self.engine, self.config.engine, self.config.prompt_format)

    def prompt(self, question: str):
        return solve_prompt(question, self.chat, self.config.domain)

    def process(self, shard: Shard) -> ShardResult:
        config, sampling = self.config, self.config.sampling
        params = sampling.params(sampling.seed + shard.index, stop=(*sampling.stop, *solve_stops(self.chat)))
        result = ShardResult(rows=[])
        prompts = [self.prompt(row["question"]) for row in shard.rows]
        answered = [
            (row, completions, [self.answer(c.text) for c in completions])
            for row, completions in result.generated(self.engine, shard.rows, prompts, params)
        ]
        grades = iter(self.grade(answered))
        for row, completions, answers in answered:
            graded = [next(grades) for _ in answers]
            correct = sum(g.correct for g in graded)
            result.counts["samples"] += len(answers)
            result.counts["no_answer"] += sum(a is None for a in answers)
            result.counts["grading_timeouts"] += sum(g.timed_out for g in graded)
            result.keep(
                {
                    **row,
                    "fail_rate": 1 - correct / len(answers),
                    "samples": len(answers),
                    "correct": correct,
                    "answers": answers,
                    "sample_correct": [g.correct for g in graded],  # per sample, for reward-train's pairs
                    **({"responses": [c.text for c in completions]} if config.keep_responses else {}),
                    "solver": config.engine.model,
                },
                row,
            )
        return result

    def answer(self, text: str) -> str | None:
        """What a sample is graded on: its final answer, or for tests its program (None when it has none)."""
        if self.config.domain == "code":  # every source's gold is tests then (see one_domain)
            from scalequest.code.programs import extract_program

            return extract_program(text)
        from scalequest.math import extract_answer

        return extract_answer(text)

    def grade(self, answered: list[tuple[dict, list, list[str | None]]]) -> list:
        """One grade per answer, in order: math answers against the gold (one grading call for the whole shard
        keeps every grading process busy), programs by running the row's tests in the sandbox."""
        config = self.config
        if config.domain == "math":
            from scalequest.math import grade_many

            pairs = [(answer, row["gold"]) for row, _, answers in answered for answer in answers]
            return grade_many(pairs, workers=config.grading_workers, timeout=config.grading_timeout)
        from scalequest.code.benchmarks import check_completions

        # One sandbox call for the whole shard, as for math: every row's programs run in parallel.
        jobs = [({"tests": row["gold"]}, program) for row, _, programs in answered for program in programs]
        statuses = check_completions(
            [row for row, _ in jobs], [program for _, program in jobs], config.test_timeout, config.grading_workers
        )
        return [ProgramGrade(status == "passed", status == "timeout") for status in statuses]

    def teardown(self) -> None:
        self.engine.close()

    def finalize(self) -> dict:
        rates = [row["fail_rate"] for row in io.load_rows(self.config.output)]
        return {
            "input": str(self.config.input),
            **({"sources": [str(source.input) for source in self.sources()]} if self.config.more_sources else {}),
            "solver": self.config.engine.model,
            "mean_fail_rate": round(sum(rates) / len(rates), 4) if rates else None,
            "fail_rate_histogram": histogram(rates),
        }
