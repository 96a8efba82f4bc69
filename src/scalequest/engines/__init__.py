"""Generation engines. Pick one with `engine.engine` in a config; each lives in its own file."""

from __future__ import annotations

from scalequest.config import EngineConfig
from scalequest.engines.base import Completion, Engine, EngineError, Prompt, SamplingParams


def load_engine(config: EngineConfig) -> Engine:
    """Build the engine a config names. Imports happen here so only the chosen backend is loaded."""
    if config.engine == "hf":
        from scalequest.engines.hf import HFEngine

        return HFEngine(config)
    if config.engine == "vllm":
        from scalequest.engines.vllm import VLLMEngine

        return VLLMEngine(config)
    if config.engine == "openai":
        from scalequest.engines.openai import OpenAIEngine

        return OpenAIEngine(config)
    raise ValueError(f"unknown engine {config.engine!r}; choose hf, vllm or openai")


__all__ = ["Completion", "Engine", "EngineError", "Prompt", "SamplingParams", "load_engine"]
