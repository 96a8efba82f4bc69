"""Reward selection (paper §2.3): score every (question, response) with a reward model, keep the best.

The paper scores the 5 responses of each question with InternLM2-7B-Reward and keeps the highest. Three
ways to score, picked from the model and the config:

- a Hugging Face sequence-classification reward model (one output: Skywork-Reward, most open reward
  models): the conversation [user: question, assistant: response] rendered with its chat template,
  scored in length-sorted batches;
- a reward model that ships its own code with a `get_scores` / `get_score` method (InternLM2-7B-Reward),
  only with `reward.trust_remote_code: true`: loaded with AutoModel, called as `model.get_scores(tokenizer,
  conversations)`, the way its model card does;
- vLLM's pooling runner (`reward.backend: vllm`, GPU users): `LLM(runner="pooling")`, raw scores through
  `llm.encode` with activation off.
The scorers live in scalequest/scorers/ (the classifier one shares its code with the difficulty regressor).

Every score is kept with the rows: the chosen response carries `reward_score` and `candidate_scores` (each
candidate's response id -> score, in sample order, so margins can be read without the other rows), and each
response not chosen is a removed row (OUTPUT/removed/) with its score and the chosen one's as evidence.

Ties go to the lowest sample_index. Optionally (`min_agreement: k`) a question is kept only when at least
k of its responses give the same final answer (majority agreement); those removed are counted apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from scalequest import io
from scalequest.config import ModelLoading, RowStageConfig, VLLMSettings
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.scorers import conversation, load_scorer, score_head_kind
from scalequest.scorers.base import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, DEFAULT_REWARD_MODEL, PAPER_REWARD_MODEL


class RewardModelConfig(VLLMSettings, ModelLoading):
    """The reward model: named and loaded like an engine's model (model, revision, tokenizer, dtype, ...)."""

    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf = transformers (sequence classifier, or get_scores with trust_remote_code); vllm = vLLM "
        "pooling runner.",
    )
    model: str = Field(
        DEFAULT_REWARD_MODEL,
        description="Reward model: HF id or local directory with a one-output score head (paper: "
        f"{PAPER_REWARD_MODEL}, which needs trust_remote_code: true).",
    )
    device: str = Field("auto", description="hf backend device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    batch_size: int | None = Field(
        None,
        ge=1,
        description=f"Conversations per forward pass; default {CUDA_BATCH_SIZE} on CUDA, {CPU_BATCH_SIZE} on CPU.",
    )


class RewardSelectConfig(RowStageConfig):
    """Score every response with a reward model and keep the highest-scoring response of each question."""

    stage = "reward-select"

    reward: RewardModelConfig = Field(default_factory=RewardModelConfig, description="The reward model.")
    min_agreement: int | None = Field(
        None,
        ge=1,
        description="Keep a question only when at least this many of its responses share a final answer (off by "
        "default; not in the paper).",
    )
    shard_size: int = Field(
        5000,
        ge=1,
        description="Responses per shard (a question's responses are never split, so a shard may be a little larger).",
    )


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def normalized_answer(answer: str) -> str:
    """An answer for agreement counting: no spaces, no `$`, lower case, no trailing period."""
    return "".join(answer.replace("$", "").split()).lower().rstrip(".")


def best_response(group: list[dict], scores: list[float]) -> int:
    """Index of the highest score in `group`; ties (and NaN scores, which rank lowest) go to the lowest sample_index."""

    def key(i: int) -> tuple[float, int]:
        score = scores[i] if not math.isnan(scores[i]) else -math.inf
        return (score, -group[i].get("sample_index", i))

    return max(range(len(group)), key=key)


def answer_counts(group: list[dict]) -> Counter:
    return Counter(
        normalized_answer(row["answer"])
        for row in group
        if isinstance(row.get("answer"), str) and row["answer"].strip()
    )


class RewardSelect(RowStage):
    config: RewardSelectConfig

    def check(self) -> None:
        score_head_kind(self.config.reward)  # a model without a score head fails before any output exists

    def required_fields(self) -> tuple[str, ...]:
        return ("question", "response")

    def id_fields(self) -> tuple[str, ...]:
        return ("id", "question_id")

    def gpus_per_replica(self) -> int:
        reward = self.config.reward
        if reward.backend == "vllm":
            return reward.tensor_parallel_size
        return 0 if reward.device == "cpu" else 1

    def count_input_rows(self) -> int:
        """Check every row, and that each question's responses are next to each other (shards never split them)."""
        source, required = self.config.input, self.required_fields()
        finished: set[str] = set()
        current = None
        count = 0
        for count, row in enumerate(io.read_rows(source), start=1):
            missing = [name for name in required if name not in row]
            if missing:
                raise io.DataError(f"input {source}: row {row['id']} has no field {missing[0]!r}")
            question_id = str(row["question_id"])
            if question_id != current:
                if question_id in finished:
                    raise io.DataError(
                        f"input {source}: row {row['id']}: the responses of question {question_id!r} are not next to "
                        "each other; "
                        "reward-select needs each question's responses together, as generate-responses writes them"
                    )
                if current is not None:
                    finished.add(current)
                current = question_id
        return count

    def input_shards(self) -> Iterator[Shard]:
        """Whole questions, about `shard_size` responses per shard; the same input always gives the same shards."""
        batch: list[dict] = []
        index = 0
        previous = None
        for row in io.read_rows(self.config.input):
            question_id = str(row["question_id"])
            if len(batch) >= self.config.shard_size and question_id != previous:
                yield Shard(index, batch)
                batch, index = [], index + 1
            batch.append(row)
            previous = question_id
        if batch:
            yield Shard(index, batch)

    def setup(self) -> None:
        self.scorer = load_scorer(self.config.reward)

    def process(self, shard: Shard) -> ShardResult:
        rows = shard.rows
        tokens_before = self.scorer.tokens
        scores = self.scorer.score([conversation(row["question"], row["response"]) for row in rows])
        result = ShardResult(rows=[], tokens_in=self.scorer.tokens - tokens_before)
        result.counts["nan_scores"] += sum(math.isnan(s) for s in scores)
        start = 0
        while start < len(rows):  # one question at a time; its responses are consecutive
            end = start
            while end < len(rows) and rows[end]["question_id"] == rows[start]["question_id"]:
                end += 1
            group, group_scores = rows[start:end], scores[start:end]
            start = end
            result.counts["questions"] += 1
            agreement = answer_counts(group)
            if self.config.min_agreement and max(agreement.values(), default=0) < self.config.min_agreement:
                for row, score in zip(group, group_scores):
                    result.remove(row, "low_agreement", {"answer_counts": dict(agreement), "score": score})
                result.counts["questions_low_agreement"] += 1
                continue
            best = best_response(group, group_scores)
            for index, (row, score) in enumerate(zip(group, group_scores)):
                if index != best:
                    evidence = {"score": score, "chosen_id": group[best]["id"], "chosen_score": group_scores[best]}
                    result.remove(row, "lower_reward", evidence)
            chosen = group[best]
            answer = chosen.get("answer")
            result.rows.append(
                {
                    **chosen,
                    "id": chosen["question_id"],
                    "response_id": chosen["id"],
                    "reward_score": group_scores[best],
                    "reward_model": self.config.reward.model,
                    "candidates": len(group),
                    "candidate_scores": {row["id"]: score for row, score in zip(group, group_scores)},
                    "answer_agreement": agreement.get(normalized_answer(answer), 0) if isinstance(answer, str) else 0,
                }
            )
        return result

    def teardown(self) -> None:
        self.scorer.close()

    def devices(self) -> tuple[str, int]:
        """(device name, GPUs) of the reward model, for the manifest's GPU hours."""
        gpus = getattr(getattr(self, "scorer", None), "gpus", 0)
        if not gpus:
            return "cpu", 0
        import torch

        return torch.cuda.get_device_name(), gpus

    def finalize(self) -> dict:
        return {
            "reward_model": self.config.reward.model,
            "reward_backend": self.config.reward.backend,
            # rows_in counts responses and rows_out questions; every dropped reason counts responses.
            "row_units": {"in": "responses", "out": "questions"},
        }


def read_scores(output) -> list[dict]:
    """Every score of a reward-select output as {id, question_id, score, selected}: the kept questions'
    candidates in input order (from `candidate_scores`), then responses of questions removed for low agreement."""
    scores = []
    for row in io.read_rows(output):
        for response_id, score in row["candidate_scores"].items():
            scores.append(
                {
                    "id": response_id,
                    "question_id": row["id"],
                    "score": score,
                    "selected": response_id == row["response_id"],
                }
            )
    for removed in io.read_removed(output, reason="low_agreement"):
        scores.append(
            {
                "id": removed["id"],
                "question_id": removed["row"]["question_id"],
                "score": removed["evidence"]["score"],
                "selected": False,
            }
        )
    return scores
