"""Question generation from scratch (paper §2.1): sample a chat model from only the pre-query prefix.

The prompt is nothing but the text a chat template writes before a user's message, so the model
continues by writing a user's question, and stops at the template's end-of-turn.

Row ids are `q-PREFIX-00000000`, `q-PREFIX-00000001`, ...: PREFIX is 6 hex digits of a hash of every setting
that decides what a row says (the generator model and engine, the prompt settings, the sampling and its seed,
the shard size), i.e. the config hash without `num` and the operational fields. Runs of other generators or
seeds therefore get disjoint ids and can be merged into one dataset, while the same config (a resume, a rerun
elsewhere, a larger `num`) gives the same ids to the same rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

from pydantic import Field

from scalequest.config import (
    EngineConfig,
    HFEngineConfig,
    Section,
    ShardedStageConfig,
    sampling_config,
    without_operational,
)
from scalequest.engines import load_engine
from scalequest.models import load_tokenizer
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.templates import pre_query_prefix, stop_strings


QuestionSampling = sampling_config("QuestionSampling", temperature=1.0, top_p=0.99, max_new_tokens=512)


class QuestionPrompt(Section):
    """The prompt and sampling of question generation, shared by generate-questions and qpo-data (which samples
    its questions exactly as generate-questions does)."""

    sampling: QuestionSampling = Field(
        default_factory=QuestionSampling,
        description="Question sampling (paper: temperature 1.0, top_p 0.99, 512 new tokens).",
    )
    pre_query_prefix: str | None = Field(
        None, description="Literal prompt text to use instead of the prefix derived from the chat template."
    )
    system_prompt: str | None = Field(
        None,
        description="Optional system turn placed before the user turn (steers a model not yet question-tuned; for a "
        "QFT model it must match what QFT trained with).",
    )


class GenerateQuestionsConfig(QuestionPrompt, ShardedStageConfig):
    """Sample questions from scratch: the prompt is only the chat template's opening of a user turn."""

    stage = "generate-questions"

    num: int = Field(1000, ge=0, description="Questions to sample (the paper: 1M per generator).")
    engine: EngineConfig = Field(default_factory=HFEngineConfig, description="The question generator.")


def id_prefix(config: GenerateQuestionsConfig) -> str:
    """`q-PREFIX-`: what every row id of this config starts with (see the module docstring)."""
    settings = config.model_dump(mode="json", exclude=config.runtime_fields | {"num"})
    digest = hashlib.sha256(json.dumps(without_operational(settings), sort_keys=True).encode()).hexdigest()
    return f"q-{digest[:6]}-"


def shard_seed(seed: int, shard_index: int) -> int:
    """Each shard gets its own seed, so a shard redone after a crash reproduces its rows."""
    return seed + 1_000_003 * shard_index


class GenerateQuestions(RowStage):
    config: GenerateQuestionsConfig

    def count_input_rows(self) -> int:
        return self.config.num

    def input_fingerprint(self) -> str | None:
        return None

    def input_shards(self) -> Iterator[Shard]:
        size, prefix = self.config.shard_size, id_prefix(self.config)
        for index, start in enumerate(range(0, self.config.num, size)):
            numbers = range(start, min(start + size, self.config.num))
            yield Shard(index, [{"id": f"{prefix}{number:08d}"} for number in numbers])

    def prepare(self) -> None:
        # Built once in the driver (cheap: the tokenizer only), so the manifest records the prompt
        # whichever executor runs the shards.
        config = self.config
        tokenizer = load_tokenizer(config.engine.tokenizer_path(), config.engine.trust_remote_code)
        self.prompt = config.pre_query_prefix or pre_query_prefix(tokenizer, config.system_prompt)
        self.stop = tuple(dict.fromkeys(stop_strings(tokenizer) + config.sampling.stop))

    def setup(self) -> None:
        self.engine = load_engine(self.config.engine)

    def process(self, shard: Shard) -> ShardResult:
        sampling = self.config.sampling
        params = sampling.params(shard_seed(sampling.seed, shard.index), stop=self.stop)
        # Every prompt is the same prefix; with n > 1 each prompt gives n rows (vLLM shares the prefix).
        outputs = self.engine.generate([self.prompt] * -(-len(shard.rows) // params.n), params)
        result = ShardResult(rows=[])
        for group in outputs:
            if group:
                result.tokens_in += group[0].prompt_tokens
        for number, row in enumerate(shard.rows):
            group = outputs[number // params.n]
            if len(group) <= number % params.n:
                result.fail(row, self.engine.failure(number // params.n))
                continue
            completion = group[number % params.n]
            result.tokens_out += completion.completion_tokens
            result.counts[f"finish_{completion.finish_reason}"] += 1
            result.keep(
                {
                    "id": row["id"],
                    "question": completion.text.strip(),
                    "generator": self.config.engine.model,
                    "sampling": {
                        "temperature": params.temperature,
                        "top_p": params.top_p,
                        "max_new_tokens": params.max_new_tokens,
                        "seed": params.seed,
                    },
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "finish_reason": completion.finish_reason,
                },
                row,
            )
        return result

    def teardown(self) -> None:
        self.engine.close()

    def finalize(self) -> dict:
        return {"generator": self.config.engine.model, "prompt": self.prompt, "id_prefix": id_prefix(self.config)}
