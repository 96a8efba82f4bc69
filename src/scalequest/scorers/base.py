"""The reward-scorer interface: conversations in, one float per conversation out, in the same order.

Three implementations, picked by `scalequest.scorers.load_scorer`: a sequence classifier
(sequence_classification.py), a model with its own `get_scores` (remote_code.py) and vLLM's pooling
runner (vllm.py). `config` is a reward-select `reward:` section (RewardModelConfig); scorers read its
fields and never import the stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from scalequest.models import ModelError

Conversation = list[dict[str, str]]

DEFAULT_REWARD_MODEL = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
PAPER_REWARD_MODEL = "internlm/internlm2-7b-reward"
# Pairs per forward pass. On CUDA batching is what makes scoring fast. On a CPU one forward pass is
# compute-bound already (SmolLM2-135M, bf16, 8 conversations of 240 tokens: 1.88 s as one batch, 1.96 s
# one by one), so a batch gains little and its padding is pure waste; MAX_PADDING keeps that small.
# benchmarks/reward_scoring.py on 2 cores: batch 4 ran at 1.0-1.4x the one-at-a-time loop.
CUDA_BATCH_SIZE = 32
CPU_BATCH_SIZE = 4


def conversation(question: str, response: str) -> Conversation:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": response}]


def no_score_head(name: str, architectures: list[str]) -> ModelError:
    shown = ", ".join(architectures) or "none listed"
    return ModelError(
        f"reward model {name!r} has no score head (architectures: {shown}); use a sequence-classification reward "
        f"model (e.g. {DEFAULT_REWARD_MODEL}), or set reward.trust_remote_code: true for a model with its own "
        f"get_score (e.g. {PAPER_REWARD_MODEL})"
    )


def load_reward_tokenizer(config):
    from transformers import AutoTokenizer

    name = config.tokenizer or config.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path(), trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of reward model {name!r}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"the tokenizer of reward model {name!r} has no chat template, so a (question, response) conversation "
            "cannot be rendered the way the reward model was trained; set reward.tokenizer to one that has it"
        )
    return tokenizer


def render_ids(tokenizer, chat: Conversation) -> list[int]:
    """Token ids of a conversation, as apply_chat_template(tokenize=True) gives them (no second BOS)."""
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def default_batch_size(config, on_cuda: bool) -> int:
    return config.batch_size or (CUDA_BATCH_SIZE if on_cuda else CPU_BATCH_SIZE)


class Scorer(ABC):
    """Scores conversations; `tokens` counts the tokens scored so far and `gpus` the GPUs in use (for the
    manifest)."""

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
