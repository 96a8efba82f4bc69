"""Response generation (paper §2.3): a solver answers every question several times with chain of thought.

Each question goes through the solver's chat template as one user turn (the question, then a request to
reason step by step and put the final answer in \\boxed{}); base models without a template get the same
request as a plain "Question: ... Answer:" prompt. The paper samples 5 responses per question from
Qwen2-Math-7B-Instruct (temperature 0.7, top_p 0.95, up to 2048 tokens) and keeps only responses that
state a final answer; reward-select then picks the best one.

Output: one row per (question, response), ids `{question_id}-r{sample_index}`. Shard i of the questions
becomes shard i of the responses, so all responses of a question stay together in one shard (reward-select
relies on that).

For programming questions (domain code) the solver is asked for one Python function in a fenced block; a
response without one, or whose program does not parse, is removed (`no_code`, `syntax`). With `execute` on,
every program runs in the sandbox (scalequest.code) on the tests the question states as `assert` lines plus
the asserts the n responses write themselves, and each row records how many it passed and its CodeT score
(agreement with the other responses, Chen et al. 2022); a response failing a test the question states is
removed (`failed_tests`) unless `keep_failing` is set.
"""

from __future__ import annotations


from pydantic import Field

from scalequest.config import EngineConfig, HFEngineConfig, RowStageConfig, SolverPrompt, sampling_config
from scalequest.engines import load_engine
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.stages.generate_questions import shard_seed
from scalequest.templates import solve_prompt, solve_stops, uses_chat_template

ResponseSampling = sampling_config("ResponseSampling", temperature=0.7, top_p=0.95, max_new_tokens=2048, n=5)

# Fields of a question row not copied into its response rows: how *that question* was generated (a response
# row has its own), and the solvability judge's whole output, which would be repeated n times (it stays in
# filter-solvability's output; its verdict is copied).
QUESTION_BOOKKEEPING = {
    "id",
    "prompt",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "sampling",
    "solvability_judgement",
}


class GenerateResponsesConfig(SolverPrompt, RowStageConfig):
    """Answer every question n times with a solver model (chain of thought, final answer in \\boxed{})."""

    stage = "generate-responses"

    engine: EngineConfig = Field(
        default_factory=HFEngineConfig, description="The solver (paper: Qwen/Qwen2-Math-7B-Instruct)."
    )
    sampling: ResponseSampling = Field(
        default_factory=ResponseSampling,
        description="Sampling (paper: n=5 responses per question, temperature 0.7, top_p 0.95, 2048 new tokens).",
    )
    question_field: str = Field("question", description="Input field holding the question text.")
    carry_fields: list[str] | None = Field(
        None,
        description="Question-row fields copied into every response row; default: all but the question's own "
        "generation bookkeeping (prompt, token counts, sampling) and the solvability judge's full output.",
    )
    shard_size: int = Field(
        1000, ge=1, description="Questions per shard (each gives up to n response rows); the unit of resume."
    )
    execute: bool = Field(
        False,
        description="domain code: run each program in the sandbox on the question's assert lines and the asserts the "
        "responses write; record tests passed and the CodeT agreement score per row.",
    )
    keep_failing: bool = Field(
        False, description="domain code with execute: keep responses that fail a test stated in the question."
    )
    test_timeout: float = Field(5.0, gt=0, description="domain code: seconds allowed per test (and for loading).")
    test_memory_mb: int = Field(1024, ge=64, description="domain code: memory limit of each program's process.")
    sandbox_workers: int | None = Field(
        None, ge=1, description="domain code: programs run at once in the sandbox; default: one per CPU core."
    )


class GenerateResponses(RowStage):
    config: GenerateResponsesConfig

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.question_field,)

    def check(self) -> None:
        if self.config.domain == "code" and self.config.execute:  # never run model code unconfined
            from scalequest.code import check_available

            check_available()

    def setup(self) -> None:
        config = self.config
        self.engine = load_engine(config.engine)
        self.chat = uses_chat_template(self.engine, config.engine, config.prompt_format)

    def carried(self, row: dict) -> dict:
        if self.config.carry_fields is not None:
            return {name: row[name] for name in self.config.carry_fields if name in row}
        skip = QUESTION_BOOKKEEPING | {self.config.question_field}
        return {name: value for name, value in row.items() if name not in skip}

    def process(self, shard: Shard) -> ShardResult:
        config, sampling = self.config, self.config.sampling
        params = sampling.params(shard_seed(sampling.seed, shard.index), stop=(*sampling.stop, *solve_stops(self.chat)))
        prompts = [solve_prompt(row[config.question_field], self.chat, config.domain) for row in shard.rows]
        result = ShardResult(rows=[])
        for row, completions in result.generated(self.engine, shard.rows, prompts, params):
            question = row[config.question_field]
            kept = []
            for sample_index, completion in enumerate(completions):
                result.counts["responses_generated"] += 1
                result.counts[f"finish_{completion.finish_reason}"] += 1
                found, reason = self.read_answer(completion.text)
                if reason is not None:
                    result.remove(row, reason, {"response": completion.text, "sample": sample_index})
                    continue
                kept.append(
                    {
                        **self.carried(row),
                        "id": f"{row['id']}-r{sample_index}",
                        "question_id": row["id"],
                        "question": question,
                        "sample_index": sample_index,
                        "response": completion.text.strip(),
                        **found,
                        "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens,
                        "finish_reason": completion.finish_reason,
                        "solver": config.engine.model,
                    }
                )
            if config.domain == "code" and config.execute and kept:
                kept = self.run_tests(row, question, kept, result)
            for response in kept:
                result.keep(response, row)
            if not kept:
                result.counts["questions_without_answer"] += 1
        return result

    def read_answer(self, text: str) -> tuple[dict, str | None]:
        """The fields a response adds ({answer} or {program}), or the reason it is removed."""
        if self.config.domain == "code":
            from scalequest.code.programs import extract_program, syntax_problem

            program = extract_program(text)
            if program is None:
                return {}, "no_code"
            return {"program": program}, "syntax" if syntax_problem(program) else None
        from scalequest.math import extract_answer

        answer = extract_answer(text)
        return {"answer": answer}, "no_final_answer" if answer is None else None

    def run_tests(self, row: dict, question: str, responses: list[dict], result: ShardResult) -> list[dict]:
        """Run the question's programs on its stated tests and on the ones its responses wrote (CodeT)."""
        from scalequest.code.programs import asserts_in, codet_scores, run_tests

        config = self.config
        stated = asserts_in(question)
        written = [test for r in responses for test in asserts_in(r["response"]) if test not in stated]
        tests = stated + list(dict.fromkeys(written))
        runs = run_tests(
            [r["program"] for r in responses], tests, config.test_timeout, config.test_memory_mb, config.sandbox_workers
        )
        scores = codet_scores([run.passed for run in runs])
        kept = []
        for response, run, score in zip(responses, runs, scores):
            passed_stated = sum(run.passed[: len(stated)])
            response.update(
                tests_stated=len(stated),
                tests_stated_passed=passed_stated,
                tests_total=len(tests),
                tests_passed=sum(run.passed),
                codet_score=score,
                # Passing every stated test is the program's grade (reward-train reads sample_correct).
                sample_correct=bool(stated) and passed_stated == len(stated),
            )
            result.counts[f"program_{run.status}"] += 1
            result.counts.update(f"tests_{kind}" for kind in run.test_kinds if kind is not None)  # e.g. tests_timeout
            if not stated:
                result.counts["responses_without_stated_tests"] += 1
            elif passed_stated < len(stated) and not config.keep_failing:
                evidence = {"response": response["response"], "sample": response["sample_index"]}
                result.remove(row, "failed_tests", {**evidence, "passed": run.passed[: len(stated)], "tests": stated})
                continue
            kept.append(response)
        return kept

    def teardown(self) -> None:
        self.engine.close()

    def finalize(self) -> dict:
        return {
            "solver": self.config.engine.model,
            "responses_per_question": self.config.sampling.n,
            # rows_in counts questions and rows_out responses; dropped.failed (failures accepted by
            # max_failed_fraction) counts questions, dropped.no_final_answer responses.
            "row_units": {"in": "questions", "out": "responses"},
        }
