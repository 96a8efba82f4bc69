"""Response generation (paper §2.3): a solver answers every question several times with chain of thought.

Each question goes through the solver's chat template as one user turn (the question, then a request to
reason step by step and put the final answer in \\boxed{}); base models without a template get the same
request as a plain "Question: ... Answer:" prompt. The paper samples 5 responses per question from
Qwen2-Math-7B-Instruct (temperature 0.7, top_p 0.95, up to 2048 tokens) and keeps only responses that
state a final answer; reward-select then picks the best one.

Output: one row per (question, response), ids `{question_id}-r{sample_index}`. Shard i of the questions
becomes shard i of the responses, so all responses of a question stay together in one shard (reward-select
relies on that).
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


class GenerateResponses(RowStage):
    config: GenerateResponsesConfig

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.question_field,)

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
        from scalequest.math import extract_answer

        sampling = self.config.sampling
        params = sampling.params(shard_seed(sampling.seed, shard.index), stop=(*sampling.stop, *solve_stops(self.chat)))
        questions = [row[self.config.question_field] for row in shard.rows]
        outputs = self.engine.generate([solve_prompt(q, self.chat) for q in questions], params)
        result = ShardResult(rows=[])
        for index, (row, question, completions) in enumerate(zip(shard.rows, questions, outputs)):
            if not completions:  # the engine gave up on this prompt for good: pending for a rerun
                result.fail(row, self.engine.failure(index))
                continue
            result.tokens_in += completions[0].prompt_tokens
            kept = 0
            for sample_index, completion in enumerate(completions):
                result.tokens_out += completion.completion_tokens
                result.counts["responses_generated"] += 1
                result.counts[f"finish_{completion.finish_reason}"] += 1
                answer = extract_answer(completion.text)
                if answer is None:
                    result.remove(row, "no_final_answer", {"response": completion.text, "sample": sample_index})
                    continue
                kept += 1
                result.keep(
                    {
                        **self.carried(row),
                        "id": f"{row['id']}-r{sample_index}",
                        "question_id": row["id"],
                        "question": question,
                        "sample_index": sample_index,
                        "response": completion.text.strip(),
                        "answer": answer,
                        "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens,
                        "finish_reason": completion.finish_reason,
                        "solver": self.config.engine.model,
                    },
                    row,
                )
            if kept == 0:
                result.counts["questions_without_answer"] += 1
        return result

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
