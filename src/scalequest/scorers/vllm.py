"""vLLM's pooling runner for reward models (GPU users): `LLM(runner="pooling")`, raw scores through
`llm.encode` with activation off, for classifiers and per-token reward models (InternLM2) alike."""

from __future__ import annotations

from scalequest.scorers.base import Conversation, Scorer, load_reward_tokenizer, no_score_head, render_ids
from scalequest.scorers.sequence_classification import architectures, read_model_config


class VLLMScorer(Scorer):
    """vLLM's pooling runner: raw scores (activation off) for classifiers and per-token reward models."""

    def __init__(self, config):
        from scalequest.engines.vllm import load_llm

        self.tokenizer = load_reward_tokenizer(config)
        # Per-token reward models (InternLM2) score the position of a reward token appended to the conversation.
        _, model_config = read_model_config(config.model, config.revision, config.trust_remote_code, "reward model")
        self.reward_token_id = getattr(model_config, "reward_token_id", None)
        self.llm, self.gpus = load_llm(config, config.engine_kwargs, what="reward model", runner="pooling")
        self.task = self.llm.pooling_task
        if self.task not in ("classify", "token_classify"):
            raise no_score_head(config.model, architectures(model_config))

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
