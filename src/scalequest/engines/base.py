"""The engine interface: prompts + sampling parameters -> n completions per prompt, with token counts.

A prompt is either raw text (sent to the model as is, e.g. a pre-query prefix) or a chat conversation
(a list of {"role", "content"} messages) that the engine renders with the model's chat template. A
conversation that ends with an assistant message is continued from that message (a prefilled reply);
local engines only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "stop" (end-of-turn, EOS or a stop string) or "length" (hit max_new_tokens)
    finish_reason: str = "stop"


@dataclass
class Usage:
    """Running token totals of one engine, read by the stage runner for the manifest."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    failures: int = 0
    extra: dict = field(default_factory=dict)


class EngineError(RuntimeError):
    """A generation request failed for good (after retries)."""


class Engine(ABC):
    """Base class of every engine. Subclasses live in one file each and import heavy libraries lazily."""

    # GPUs this engine computes on (0 on CPU and for remote servers), for GPU-hour accounting.
    gpus: int = 0

    def __init__(self) -> None:
        self.usage = Usage()
        # Why prompt i of the latest `generate` call got no completions (failed for good after retries).
        self.errors: dict[int, str] = {}

    def failure(self, index: int) -> str:
        """One line on why prompt `index` of the latest call got no completions, for the rerun message."""
        return self.errors.get(index, "the engine returned no completions")

    @abstractmethod
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt in order, `params.n` completions."""

    def _count(self, results: list[list[Completion]]) -> list[list[Completion]]:
        # Prompt tokens are counted once per prompt, not once per sample.
        for completions in results:
            if completions:
                self.usage.prompt_tokens += completions[0].prompt_tokens
            self.usage.completion_tokens += sum(c.completion_tokens for c in completions)
            self.usage.requests += 1
        return results

    def close(self) -> None:
        """Release the model (GPU memory, worker processes, HTTP connections)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; return the text and whether a stop string was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# Tokenizers that know no limit report transformers' VERY_LARGE_INTEGER (1e30) as model_max_length.
LARGEST_CONTEXT = 10_000_000


def model_context_length(model_config, tokenizer=None) -> int | None:
    """Tokens a model attends over (prompt and completion together): its config's positions, else the
    tokenizer's model_max_length when that is a real limit; None when neither says."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < LARGEST_CONTEXT else None


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The text a local engine feeds the model: raw text as is, a conversation through the chat template."""
    if isinstance(prompt, str):
        return prompt
    if prompt and prompt[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(prompt, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
