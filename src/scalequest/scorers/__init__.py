"""Scorers: models that turn text into one number.

sequence_classification.py is shared by the difficulty stages (a regressor over questions) and
reward-select (a reward model over conversations). reward-select has two more ways to score, each in its
own file: remote_code.py (a model with its own `get_scores`) and vllm.py (vLLM's pooling runner);
`load_scorer` picks one from the model and the config, importing only the one it needs.
"""

from __future__ import annotations

from scalequest.models import ModelError
from scalequest.scorers.base import Conversation, Scorer, conversation, no_score_head
from scalequest.scorers.sequence_classification import architectures, head_outputs, read_model_config


def score_head_kind(config) -> str:
    """'classifier', 'remote_code' or 'vllm_reward' for a reward model section; ModelError when the model
    cannot give a score. Only the config is read, so a wrong model fails before any output exists."""
    _, model_config = read_model_config(
        config.model,
        config.revision,
        config.trust_remote_code,
        what="reward model",
        trust_setting="reward.trust_remote_code",
    )
    outputs = head_outputs(model_config)
    if outputs is not None:
        if outputs != 1:
            raise ModelError(
                f"reward model {config.model!r} is a classifier with {outputs} outputs; a reward model gives one score"
            )
        return "classifier"
    names = architectures(model_config)
    if config.backend == "vllm" and any("RewardModel" in name for name in names):
        return "vllm_reward"  # e.g. InternLM2ForRewardModel, which vLLM implements itself
    if config.backend == "hf" and config.trust_remote_code and getattr(model_config, "auto_map", None):
        return "remote_code"  # whether its code has get_score(s) is checked once loaded
    raise no_score_head(config.model, names)


def load_scorer(config) -> Scorer:
    """The scorer for a reward model section (reward-select's RewardModelConfig)."""
    if config.backend == "vllm":
        from scalequest.scorers.vllm import VLLMScorer

        score_head_kind(config)
        return VLLMScorer(config)
    if score_head_kind(config) == "remote_code":
        from scalequest.scorers.remote_code import RemoteCodeScorer

        return RemoteCodeScorer(config)
    from scalequest.scorers.sequence_classification import ClassifierScorer

    return ClassifierScorer(config)


__all__ = ["Conversation", "Scorer", "conversation", "load_scorer", "score_head_kind"]
