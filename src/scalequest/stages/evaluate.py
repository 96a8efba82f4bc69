"""Benchmark evaluation: zero-shot chain of thought, greedy decoding, pass@1 (or a majority vote over k).

Each question is sent through the model's chat template (a plain "Question: ... Answer:" prompt for base
models without one) with a request to reason step by step and put the final answer in \\boxed{}. The
final answer is extracted, graded against the gold answer with Math-Verify and our rules
(scalequest.math.answers), and summarised per benchmark.

Optionally (`judge`, off by default) an LLM judges the answers the rules cannot decide: a grading time-out,
an answer or gold that no parser reads, a value against a choice letter. Its verdicts are kept apart:
`accuracy` is always the rules' figure, `accuracy_with_judge` counts the judged answers too.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from scalequest import io
from scalequest.config import EngineConfig, Grading, HFEngineConfig, ShardedStageConfig, SolverPrompt, sampling_config
from scalequest.engines import Engine, load_engine
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.templates import solve_prompt, solve_stops, uses_chat_template

EvaluationSampling = sampling_config("EvaluationSampling", temperature=0.0, top_p=1.0, max_new_tokens=2048)
AnswerJudgeSampling = sampling_config("AnswerJudgeSampling", temperature=0.0, top_p=1.0, max_new_tokens=1024)

# Our wording. No braces other than the placeholders: the texts go in with str.format.
JUDGE_PROMPT = """You are checking a student's final answer to a math problem against the reference answer.

Problem:
{question}

Reference answer:
{gold}

Student's final answer:
{answer}

Is the student's final answer mathematically equivalent to the reference answer: the same value, expression, \
set or choice, possibly written in another form, order or notation? Do not solve the problem again and do not \
judge any reasoning; compare the two answers only. For a multiple-choice problem, the letter of the right option \
and that option's content are both equivalent to it.

Explain briefly. Then write your verdict alone on the last line: EQUIVALENT or NOT EQUIVALENT."""


class EvaluateConfig(SolverPrompt, Grading, ShardedStageConfig):
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
    judge: EngineConfig | None = Field(
        None,
        description="An LLM that judges the answers the rules cannot decide (a grading time-out, an answer or gold no "
        "parser reads, a value against a choice letter); an engine section like `engine` (judge.model=..., "
        "judge.engine=openai, ...). Off by default. Reported apart: accuracy stays rule-based, accuracy_with_judge "
        "adds the judged answers.",
    )
    judge_sampling: AnswerJudgeSampling = Field(
        default_factory=AnswerJudgeSampling, description="Judge decoding (greedy, up to 1024 new tokens)."
    )
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


# The judge's last line: "EQUIVALENT", "**Verdict: NOT EQUIVALENT**", "\\boxed{\\text{EQUIVALENT}}".
_JUDGE_MARKUP = re.compile(r"\\(?:boxed|fbox|text|textbf|mathrm|mathbf)\s*\{|[*_`#>\"'“”‘’$\[\](){}.,;:!\-]")
_JUDGE_ECHO = re.compile(r"\bEQUIVALENT\s*(?:/|OR)\s*NOT\s+EQUIVALENT\b")
_NOT_EQUIVALENT = re.compile(r"\b(?:NOT\s+|NON\s*|IN)EQUIVALENT\b")
_EQUIVALENT = re.compile(r"\bEQUIVALENT\b")


def parse_judge_verdict(output: str) -> Literal["equivalent", "not_equivalent", "unclear"]:
    """The judge's verdict from the last non-empty line of its output; "unclear" when that line has none
    (or only repeats the choice "EQUIVALENT or NOT EQUIVALENT"). Earlier lines never count."""
    lines = [line for line in (output or "").splitlines() if _JUDGE_MARKUP.sub(" ", line).strip()]
    if not lines:
        return "unclear"
    last = " ".join(_JUDGE_MARKUP.sub(" ", lines[-1]).upper().split())
    if _JUDGE_ECHO.search(last):
        return "unclear"
    if _NOT_EQUIVALENT.search(last):
        return "not_equivalent"
    return "equivalent" if _EQUIVALENT.search(last) else "unclear"


def judge_prompt(question: str, gold: str, answer: str) -> str:
    return JUDGE_PROMPT.format(question=question.strip(), gold=str(gold).strip(), answer=answer.strip())


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer (whitespace-insensitive); ties go to the one seen first."""
    counts = Counter(" ".join(a.split()) for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(" ".join(a.split()) for a in answers if a is not None and counts[" ".join(a.split())] == best)


class Evaluate(RowStage):
    config: EvaluateConfig

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
        self.judge: Engine | None = None
        if config.judge is not None:
            self.judge = load_engine(config.judge)
            self.judge_chat = uses_chat_template(self.judge, config.judge, "auto")

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
        answered: list[tuple[dict, dict]] = []  # (output row, input row)
        for index, (row, completions) in enumerate(zip(shard.rows, outputs)):
            if not completions:  # a failed request is not a wrong answer: pending for a rerun
                result.fail(row, self.engine.failure(index))
                continue
            answers = [extract_answer(c.text) for c in completions]
            predicted = answers[0] if len(answers) == 1 else majority_answer(answers)
            result.tokens_in += completions[0].prompt_tokens
            result.tokens_out += sum(c.completion_tokens for c in completions)
            out = {
                "id": row["id"],
                "benchmark": row["benchmark"],
                "question": row["question"],
                "prompt": self.prompt(row["question"]),
                "response": completions[0].text,
                **({"responses": [c.text for c in completions], "sample_answers": answers} if sampling.n > 1 else {}),
                "extracted_answer": predicted,
                "gold": row["gold"],
                "response_tokens": sum(c.completion_tokens for c in completions) / len(completions),
                "seconds": round(per_row_seconds, 4),
            }
            answered.append((out, row))
        grades = grade_many(
            [(out["extracted_answer"], out["gold"]) for out, _ in answered],
            workers=self.config.grading_workers,
            timeout=self.config.grading_timeout,
        )
        for (out, _), graded in zip(answered, grades):
            out["correct"] = graded.correct
            out["grading_timed_out"] = graded.timed_out
            # The rules could not tell (time-out, unreadable answer or gold, value against a choice letter).
            out["grading_decided"] = graded.decided
            out["judge_verdict"] = None
            out["judge_output"] = None
        undecided = [out for out, _ in answered if not out["grading_decided"]]
        judge_failed = self.run_judge(undecided, shard.index, result)
        for out, row in answered:
            if out["id"] in judge_failed:  # the judge's request failed for good: the whole row is pending
                result.fail(row, "judge: " + judge_failed[out["id"]])
                continue
            result.keep(out, row)
            result.counts["grading_timeouts"] += int(out["grading_timed_out"])
            result.counts["no_answer"] += int(out["extracted_answer"] is None)
            result.counts["undecided"] += int(not out["grading_decided"])
            if out["judge_verdict"] is not None:
                result.counts["judged"] += 1
                result.counts[f"judge_{out['judge_verdict']}"] += 1
        return result

    def run_judge(self, rows: list[dict], shard_index: int, result: ShardResult) -> dict:
        """Ask the judge about `rows` (those the rules could not decide); fills their judge fields and returns
        {row id: failure} for the rows whose request failed."""
        judge = getattr(self, "judge", None)
        if judge is None or not rows:
            return {}
        sampling = self.config.judge_sampling
        texts = [judge_prompt(row["question"], row["gold"], row["extracted_answer"]) for row in rows]
        prompts = [[{"role": "user", "content": text}] if self.judge_chat else text for text in texts]
        outputs = judge.generate(prompts, sampling.params(sampling.seed + shard_index, n=1))
        failed = {}
        for index, (row, completions) in enumerate(zip(rows, outputs)):
            if not completions:
                failed[row["id"]] = judge.failure(index)
                continue
            completion = completions[0]
            verdict = parse_judge_verdict(completion.text)
            row["judge_verdict"], row["judge_output"] = verdict, completion.text
            result.tokens_in += completion.prompt_tokens
            result.tokens_out += completion.completion_tokens
            result.counts["judge_tokens_out"] += completion.completion_tokens
        return failed

    def devices(self) -> tuple[str, int]:
        gpus = sum(getattr(engine, "gpus", 0) for engine in (self.engine, getattr(self, "judge", None)))
        if not gpus:
            return "cpu", 0
        import torch

        return torch.cuda.get_device_name(), gpus

    def teardown(self) -> None:
        self.engine.close()
        if getattr(self, "judge", None) is not None:
            self.judge.close()

    def finalize(self) -> dict:
        from scalequest.math import benchmark_source

        config = self.config
        summary = summarize(io.load_rows(config.output), config.benchmarks, judged=config.judge is not None)
        for entry in summary:  # which copy was graded: bundled, a local file or the Hub (results differ by copy)
            if entry["benchmark"] in config.benchmarks:
                entry["source"] = str(benchmark_source(entry["benchmark"], config.data_dir))
        write_summary(config.output, summary, config.engine.model)
        judge = {"judge": config.judge.model, "judge_prompt": JUDGE_PROMPT} if config.judge is not None else {}
        return {"model": config.engine.model, "summary": summary, **judge}


def summarize(rows: list[dict], benchmarks: list[str], judged: bool = False) -> list[dict]:
    """Per benchmark: n, accuracy (%, by the rules), mean response tokens, seconds, unanswered, timed-out and
    undecided checks; with `judged` (a judge ran) also the answers judged and accuracy_with_judge (%), which
    counts the answers the judge found equivalent as correct."""
    table = []
    for name in benchmarks:
        mine = [r for r in rows if r["benchmark"] == name]
        if not mine:
            continue
        n = len(mine)
        entry = {
            "benchmark": name,
            "n": n,
            "accuracy": round(100 * sum(r["correct"] for r in mine) / n, 2),
            "mean_response_tokens": round(sum(r["response_tokens"] for r in mine) / n, 1),
            "seconds": round(sum(r["seconds"] for r in mine), 1),
            "no_answer": sum(r["extracted_answer"] is None for r in mine),
            "grading_timeouts": sum(r["grading_timed_out"] for r in mine),
            "undecided": sum(not r.get("grading_decided", True) for r in mine),
        }
        if judged:
            entry["judged"] = sum(r.get("judge_verdict") is not None for r in mine)
            entry["judged_equivalent"] = sum(r.get("judge_verdict") == "equivalent" for r in mine)
            correct = sum(r["correct"] or r.get("judge_verdict") == "equivalent" for r in mine)
            entry["accuracy_with_judge"] = round(100 * correct / n, 2)
        table.append(entry)
    if len(table) > 1:
        average = {
            "benchmark": "average",
            "n": sum(t["n"] for t in table),
            "accuracy": round(sum(t["accuracy"] for t in table) / len(table), 2),
        }
        if judged:
            average["judged"] = sum(t["judged"] for t in table)
            average["accuracy_with_judge"] = round(sum(t["accuracy_with_judge"] for t in table) / len(table), 2)
        table.append(average)
    return table


def markdown_table(summary: list[dict]) -> str:
    judged = any("accuracy_with_judge" in entry for entry in summary)
    columns = [
        "benchmark",
        "n",
        "accuracy",
        *(["accuracy_with_judge", "judged"] if judged else []),
        "mean_response_tokens",
        "seconds",
        "no_answer",
        "grading_timeouts",
        "undecided",
        "source",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in summary:
        lines.append("| " + " | ".join(str(entry.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: list[dict], model: str) -> None:
    io.atomic_write_text(out / "summary.json", json.dumps({"model": model, "benchmarks": summary}, indent=2))
    io.atomic_write_text(out / "summary.md", f"# Evaluation of {model}\n\n" + markdown_table(summary))
