"""Preference pairs for question preference optimization (QPO data, paper §2.2).

Sample questions from the QFT model exactly as generate-questions does (the same GenerateQuestions code
runs inside this stage), pick one direction per question at random, solvability or difficulty, and ask an
optimizer model to rewrite the question toward it (paper: GPT-4o-mini at temperature 0, 10K questions).
The rewrite is `chosen`, the original `rejected`, and the prompt is the pre-query prefix, so QPO teaches
the generator to write the rewrite from the same prefix.

Sampling inside this stage (rather than reading a generate-questions output) keeps the pipeline order of
the paper, qft -> qpo-data -> qpo -> generate-questions, with no second question-generation stage before QPO.

A pair is dropped, and counted by reason in the manifest, when the optimizer failed for good or timed out
(its engine returns no completion), its reply has no marked final question, the question was cut by the
token limit, or the rewrite is empty, unchanged, non-ASCII or longer than `max_rewrite_chars`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from scalequest.config import (
    ConfigError,
    DomainChoice,
    EngineConfig,
    HFEngineConfig,
    ShardedStageConfig,
    sampling_config,
)
from scalequest.engines import Engine, load_engine
from scalequest.prompts import DIRECTIONS, optimizer_prompt, parse_final_question
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig, QuestionPrompt

OptimizerSampling = sampling_config("OptimizerSampling", temperature=0.0, top_p=1.0, max_new_tokens=1024)


class QPODataConfig(DomainChoice, QuestionPrompt, ShardedStageConfig):
    """Build QPO preference pairs: sample questions from the QFT model, rewrite each toward solvability or
    difficulty."""

    stage = "qpo-data"

    num: int = Field(10000, ge=0, description="Questions to sample and rewrite (paper: 10K).")
    generator: EngineConfig = Field(
        default_factory=HFEngineConfig, description="The question generator: the QFT model."
    )
    optimizer: EngineConfig = Field(
        default_factory=HFEngineConfig,
        description="The model that rewrites questions (paper: gpt-4o-mini through engine=openai).",
    )
    optimizer_sampling: OptimizerSampling = Field(
        default_factory=OptimizerSampling, description="Optimizer sampling (paper: temperature 0)."
    )
    optimizer_reply_prefix: str | None = Field(
        None,
        description="Text the optimizer's reply is made to start with (a prefilled assistant turn), e.g. 'Final "
        "question:'; "
        "keeps small local optimizers to the format. hf and vllm engines only.",
    )
    directions: list[Literal["solvability", "difficulty"]] = Field(
        default_factory=lambda: list(DIRECTIONS),
        min_length=1,
        description="Directions to choose from, one at random per question.",
    )
    seed: int = Field(0, description="Seed of the direction chosen for each question.")
    max_rewrite_chars: int = Field(2000, ge=1, description="Drop rewrites longer than this many characters.")


def choose_direction(seed: int, row_id: str, directions: list[str]) -> str:
    """The direction for one question: random, but fixed by seed and row id, so a redone shard gets the same."""
    return random.Random(f"{seed}:{row_id}").choice(directions)


def normalized(text: str) -> str:
    return " ".join(text.split()).lower()


def judge_rewrite(
    original: str, output: str, finish_reason: str, max_chars: int, domain: str = "math"
) -> tuple[str | None, str | None]:
    """(rewrite, None) for a usable rewrite of `original`, else (rewrite or None, the reason to drop the pair)."""
    rewrite = parse_final_question(output, domain)
    if rewrite is None:
        return None, "optimizer_truncated" if finish_reason == "length" else "no_final_question"
    if not rewrite:
        return rewrite, "empty_rewrite"
    # A question that runs into the token limit was cut mid-way.
    if finish_reason == "length" and output.rstrip().endswith(rewrite[-40:]):
        return rewrite, "optimizer_truncated"
    if normalized(rewrite) == normalized(original):
        return rewrite, "unchanged"
    if not rewrite.isascii():
        return rewrite, "non_ascii"
    if len(rewrite) > max_chars:
        return rewrite, "too_long"
    return rewrite, None


class BuildQPOData(RowStage):
    config: QPODataConfig

    def question_stage(self) -> GenerateQuestions:
        """The generate-questions stage this stage samples with (same shards, ids and seeds)."""
        config = self.config
        return GenerateQuestions(
            GenerateQuestionsConfig(
                output=config.output,
                num=config.num,
                shard_size=config.shard_size,
                engine=config.generator,
                sampling=config.sampling.model_dump(),
                system_prompt=config.system_prompt,
                pre_query_prefix=config.pre_query_prefix,
                progress=config.progress,
            )
        )

    def check(self) -> None:
        if self.config.optimizer.engine == "openai" and self.config.optimizer_reply_prefix:
            raise ConfigError(
                "qpo-data: optimizer_reply_prefix needs a local optimizer engine (hf or vllm); "
                "OpenAI-compatible chat APIs do not continue a prefilled reply"
            )

    def count_input_rows(self) -> int:
        return self.config.num

    def input_shards(self) -> Iterator[Shard]:
        return self.question_stage().input_shards()

    def prepare(self) -> None:
        # In the driver, as generate-questions does: the prompt and stop strings travel to every worker.
        self.questions = self.question_stage()
        self.questions.prepare()

    def setup(self) -> None:
        self.questions.setup()
        self.optimizer = self.load_optimizer()

    def load_optimizer(self) -> Engine:
        return load_engine(self.config.optimizer)

    def process(self, shard: Shard) -> ShardResult:
        config = self.config
        sampled = self.questions.process(shard)
        result = ShardResult(rows=[], tokens_in=sampled.tokens_in, tokens_out=sampled.tokens_out, failed=sampled.failed)
        source = {row["id"]: row for row in shard.rows}  # a question keeps the id of the input row it came from
        for removed in sampled.removed:
            result.remove(removed["row"], f"generator_{removed['reason']}", removed["evidence"])
        originals = []
        for row in sampled.rows:
            if row["question"]:
                originals.append(row)
            else:
                result.remove(row, "empty_original")
        directions = [choose_direction(config.seed, row["id"], config.directions) for row in originals]
        sampling = config.optimizer_sampling
        params = sampling.params(sampling.seed + shard.index, n=1)
        prompts = [optimizer_prompt(row["question"], d, config.domain) for row, d in zip(originals, directions)]
        reply_prefix = config.optimizer_reply_prefix or ""
        if reply_prefix:
            prompts = [prompt + [{"role": "assistant", "content": reply_prefix}] for prompt in prompts]
        outputs = self.optimizer.generate(prompts, params) if prompts else []
        for index, (row, direction, completions) in enumerate(zip(originals, directions, outputs)):
            if not completions:  # failed for good (after the engine's retries): pending for a rerun
                result.fail(source[row["id"]], "optimizer: " + self.optimizer.failure(index))
                continue
            result.counts[f"direction_{direction}"] += 1
            completion = completions[0]
            reply = reply_prefix + completion.text
            result.tokens_in += completion.prompt_tokens
            result.tokens_out += completion.completion_tokens
            result.counts["optimizer_tokens_out"] += completion.completion_tokens
            rewrite, reason = judge_rewrite(
                row["question"], reply, completion.finish_reason, config.max_rewrite_chars, config.domain
            )
            if reason is not None:
                result.remove(
                    row, reason, {"direction": direction, "reply": reply, "finish_reason": completion.finish_reason}
                )
                continue
            result.counts[f"pairs_{direction}"] += 1
            result.keep(
                {
                    "id": row["id"],
                    "prompt": self.questions.prompt,
                    "chosen": rewrite,
                    "rejected": row["question"],
                    "direction": direction,
                    "generator": config.generator.model,
                    "optimizer": config.optimizer.model,
                    "optimizer_output": reply,
                    "optimizer_finish_reason": completion.finish_reason,
                },
                source[row["id"]],
            )
        return result

    def devices(self) -> tuple[str, int]:
        gpus = sum(getattr(engine, "gpus", 0) for engine in (self.questions.engine, self.optimizer))
        if not gpus:
            return "cpu", 0
        import torch

        return torch.cuda.get_device_name(), gpus

    def teardown(self) -> None:
        self.questions.teardown()
        self.optimizer.close()

    def finalize(self) -> dict:
        return {
            "generator": self.config.generator.model,
            "optimizer": self.config.optimizer.model,
            "prompt": self.questions.prompt,
        }
