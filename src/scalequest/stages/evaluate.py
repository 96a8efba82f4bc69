"""Benchmark evaluation: zero-shot chain of thought, greedy decoding, pass@1 (or a majority vote over k).

Each question is sent through the model's chat template (a plain "Question: ... Answer:" prompt for base
models without one) with a request to reason step by step and put the final answer in \\boxed{}. The
final answer is extracted, graded against the gold answer with Math-Verify, and summarised per benchmark.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from scalequest import io
from scalequest.config import EngineConfig, HFEngineConfig, ShardedStageConfig, sampling_config
from scalequest.engines import load_engine
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.templates import solve_prompt, solve_stops, uses_chat_template

EvaluationSampling = sampling_config("EvaluationSampling", temperature=0.0, top_p=1.0, max_new_tokens=2048)


class EvaluateConfig(ShardedStageConfig):
    """Evaluate a model on math benchmarks (zero-shot chain of thought, greedy, pass@1)."""

    stage = "evaluate"

    benchmarks: list[str] = Field(
        ["gsm8k", "math500", "college_math", "olympiadbench", "gsm_hard"],
        description="Benchmarks to run (gsm8k, math500, college_math, olympiadbench, gsm_hard, minerva_math, aime24, "
        "amc23).",
    )
    data_dir: Path | None = Field(
        None,
        description="Folder with NAME_test.jsonl files for benchmarks not bundled (default $SCALEQUEST_DATA_DIR); "
        "else the Hub.",
    )
    limit: int | None = Field(
        None, ge=1, description="Evaluate only the first N questions of each benchmark (quick runs)."
    )
    engine: EngineConfig = Field(default_factory=HFEngineConfig, description="The model to evaluate.")
    sampling: EvaluationSampling = Field(
        default_factory=EvaluationSampling,
        description="Decoding; greedy by default. Set sampling.n=k with a temperature for a majority vote.",
    )
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="chat = through the chat template; plain = 'Question: ... Answer:' for base models; auto = chat "
        "when the tokenizer has a template.",
    )
    grading_timeout: float = Field(
        5.0, gt=0, description="Seconds allowed per answer check; a check that runs over counts as wrong."
    )
    grading_workers: int | None = Field(None, ge=1, description="Grading processes; default: one per CPU core.")
    shard_size: int = Field(256, ge=1, description="Questions per output shard; a shard is the unit of resume.")

    @field_validator("benchmarks")
    @classmethod
    def known_benchmarks(cls, names: list[str]) -> list[str]:
        from scalequest.math import BENCHMARKS

        unknown = [name for name in names if name not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark {unknown[0]!r}; known benchmarks: {', '.join(BENCHMARKS)}")
        if not names:
            raise ValueError("name at least one benchmark")
        return names


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer (whitespace-insensitive); ties go to the one seen first."""
    counts = Counter(" ".join(a.split()) for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(" ".join(a.split()) for a in answers if a is not None and counts[" ".join(a.split())] == best)


class Evaluate(RowStage):
    config: EvaluateConfig

    def check(self) -> None:
        self.config.engine.model_path()

    def input_fingerprint(self) -> str | None:
        return None

    def load_questions(self) -> list[dict]:
        from scalequest.math import load_benchmark

        if not hasattr(self, "_questions"):
            self._questions = [
                row
                for name in self.config.benchmarks
                for row in load_benchmark(name, self.config.data_dir, self.config.limit)
            ]
        return self._questions

    def count_input_rows(self) -> int:
        return len(self.load_questions())

    def input_shards(self) -> Iterator[Shard]:
        # Shards never mix benchmarks, and shard numbers depend only on each benchmark's own rows.
        by_benchmark: dict[str, list[dict]] = defaultdict(list)
        for row in self.load_questions():
            by_benchmark[row["benchmark"]].append(row)
        index = 0
        for name in self.config.benchmarks:
            rows = by_benchmark[name]
            for start in range(0, len(rows), self.config.shard_size):
                yield Shard(index, rows[start : start + self.config.shard_size])
                index += 1

    def setup(self) -> None:
        config = self.config
        self.engine = load_engine(config.engine)
        self.chat = uses_chat_template(self.engine, config.engine, config.prompt_format)

    def prompt(self, question: str):
        return solve_prompt(question, self.chat)

    def process(self, shard: Shard) -> ShardResult:
        from scalequest.math import extract_answer, grade_many

        sampling = self.config.sampling
        params = sampling.params(sampling.seed + shard.index, stop=(*sampling.stop, *solve_stops(self.chat)))
        started = time.time()
        outputs = self.engine.generate([self.prompt(row["question"]) for row in shard.rows], params)
        per_row_seconds = (time.time() - started) / max(len(shard.rows), 1)
        result = ShardResult(rows=[])
        pending = []
        for index, (row, completions) in enumerate(zip(shard.rows, outputs)):
            if not completions:  # a failed request is not a wrong answer: pending for a rerun
                result.fail(row, self.engine.failure(index))
                continue
            answers = [extract_answer(c.text) for c in completions]
            predicted = answers[0] if len(answers) == 1 else majority_answer(answers)
            result.tokens_in += completions[0].prompt_tokens
            result.tokens_out += sum(c.completion_tokens for c in completions)
            pending.append((predicted, row["gold"]))
            result.keep(
                {
                    "id": row["id"],
                    "benchmark": row["benchmark"],
                    "question": row["question"],
                    "prompt": self.prompt(row["question"]),
                    "response": completions[0].text,
                    **(
                        {"responses": [c.text for c in completions], "sample_answers": answers}
                        if sampling.n > 1
                        else {}
                    ),
                    "extracted_answer": predicted,
                    "gold": row["gold"],
                    "response_tokens": sum(c.completion_tokens for c in completions) / len(completions),
                    "seconds": round(per_row_seconds, 4),
                },
                row,
            )
        grades = grade_many(pending, workers=self.config.grading_workers, timeout=self.config.grading_timeout)
        for out, graded in zip(result.rows, grades):
            out["correct"] = graded.correct
            out["grading_timed_out"] = graded.timed_out
            result.counts["grading_timeouts"] += int(graded.timed_out)
            result.counts["no_answer"] += int(out["extracted_answer"] is None)
        return result

    def teardown(self) -> None:
        self.engine.close()

    def finalize(self) -> dict:
        from scalequest.math import benchmark_source

        summary = summarize(io.load_rows(self.config.output), self.config.benchmarks)
        for entry in summary:  # which copy was graded: bundled, a local file or the Hub (results differ by copy)
            if entry["benchmark"] in self.config.benchmarks:
                entry["source"] = str(benchmark_source(entry["benchmark"], self.config.data_dir))
        write_summary(self.config.output, summary, self.config.engine.model)
        return {"model": self.config.engine.model, "summary": summary}


def summarize(rows: list[dict], benchmarks: list[str]) -> list[dict]:
    """Per benchmark: n, accuracy (%), mean response tokens, seconds, unanswered and timed-out checks."""
    table = []
    for name in benchmarks:
        mine = [r for r in rows if r["benchmark"] == name]
        if not mine:
            continue
        n = len(mine)
        table.append(
            {
                "benchmark": name,
                "n": n,
                "accuracy": round(100 * sum(r["correct"] for r in mine) / n, 2),
                "mean_response_tokens": round(sum(r["response_tokens"] for r in mine) / n, 1),
                "seconds": round(sum(r["seconds"] for r in mine), 1),
                "no_answer": sum(r["extracted_answer"] is None for r in mine),
                "grading_timeouts": sum(r["grading_timed_out"] for r in mine),
            }
        )
    if len(table) > 1:
        table.append(
            {
                "benchmark": "average",
                "n": sum(t["n"] for t in table),
                "accuracy": round(sum(t["accuracy"] for t in table) / len(table), 2),
            }
        )
    return table


def markdown_table(summary: list[dict]) -> str:
    columns = [
        "benchmark",
        "n",
        "accuracy",
        "mean_response_tokens",
        "seconds",
        "no_answer",
        "grading_timeouts",
        "source",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in summary:
        lines.append("| " + " | ".join(str(entry.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: list[dict], model: str) -> None:
    io.atomic_write_text(out / "summary.json", json.dumps({"model": model, "benchmarks": summary}, indent=2))
    io.atomic_write_text(out / "summary.md", f"# Evaluation of {model}\n\n" + markdown_table(summary))
