"""Any OpenAI-compatible server (vllm serve, SGLang, llama.cpp server, OpenAI itself) through the `openai` SDK.

Raw-text prompts go to /v1/completions (the server applies no chat template), chat prompts to
/v1/chat/completions. One HTTP request per prompt, at most `max_concurrency` in flight. Retries with
exponential backoff on 408/409/429/5xx, timeouts and connection errors are the SDK's own (`max_retries`,
honouring `retry-after`); a prompt that still fails is logged, counted in `usage.failures` and gets no
completions (its reason in `errors`): the stage keeps that row pending for a rerun.

The API key is read from the environment variable `api_key_env` names and handed to the SDK client only:
it is never stored on the engine, logged, or put in an exception.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import openai

from scalequest import progress
from scalequest.config import EngineConfig
from scalequest.engines.base import Completion, Engine, Prompt, SamplingParams, truncate_at_stop

log = logging.getLogger(__name__)

# The OpenAI API rejects more stop strings than this; the rest are cut from the text afterwards.
MAX_API_STOPS = 4
# What OpenAIEngineConfig.api_key gives a local server (vllm serve, SGLang, llama.cpp) when no key is set.
DUMMY_KEY = "EMPTY"


class OpenAIEngine(Engine):
    def __init__(self, config: EngineConfig):
        super().__init__()
        self.config = config
        # The SDK client holds the only copy of the key, for its Authorization header.
        self.client = openai.OpenAI(
            api_key=config.api_key(),
            base_url=config.base_url,
            max_retries=config.max_retries,
            timeout=config.request_timeout,
        )

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        from tqdm.auto import tqdm

        workers = max(1, min(self.config.max_concurrency, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-engine") as pool:
            # map() yields in submission order, so results line up with prompts.
            requests = pool.map(lambda prompt: self._request(prompt, params), prompts)
            answers = list(
                tqdm(
                    requests,
                    total=len(prompts),
                    desc="generate",
                    unit="prompt",
                    leave=False,
                    disable=len(prompts) < 16 or progress.inner_bars_hidden(),  # a stage's view counts the rows
                )
            )
        results: list[list[Completion]] = []
        self.errors = {}
        for index, answer in enumerate(answers):
            if isinstance(answer, str):
                self.usage.failures += 1
                self.errors[index] = answer
                answer = []
            results.append(answer)
        return self._count(results)

    def _request(self, prompt: Prompt, params: SamplingParams) -> list[Completion] | str:
        """The completions of one prompt, or why the request failed for good (after the SDK's retries)."""
        kwargs = dict(
            model=self.config.model,
            n=params.n,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
        )
        if params.stop:
            kwargs["stop"] = list(params.stop[:MAX_API_STOPS])
        if params.seed is not None:
            kwargs["seed"] = params.seed
        try:
            if isinstance(prompt, str):
                response = self.client.completions.create(prompt=prompt, **kwargs)
                texts = [(c, c.text) for c in sorted(response.choices, key=lambda c: c.index)]
            else:
                response = self.client.chat.completions.create(messages=prompt, **kwargs)
                texts = [(c, c.message.content or "") for c in sorted(response.choices, key=lambda c: c.index)]
        except openai.OpenAIError as err:
            log.warning(
                "openai engine: request to %s failed: %s", self.config.base_url or "the OpenAI API", self._describe(err)
            )
            status = getattr(err, "status_code", None)
            return type(err).__name__ + (f" (HTTP {status})" if status else "")

        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        shares = split_evenly(usage.completion_tokens if usage else 0, len(texts))
        completions = []
        for (choice, text), share in zip(texts, shares):
            # A server may report each choice's own count (scalequest serve does); otherwise the total
            # is split evenly, which keeps the usage sums exact.
            tokens = (choice.model_extra or {}).get("completion_tokens")
            finish = "length" if choice.finish_reason == "length" else "stop"
            text, stopped = truncate_at_stop(text, params.stop[MAX_API_STOPS:])
            if stopped:
                finish = "stop"
            completions.append(Completion(text, prompt_tokens, tokens if isinstance(tokens, int) else share, finish))
        return completions

    def _describe(self, err: openai.OpenAIError) -> str:
        """One line about a failed request, without the key."""
        status = getattr(err, "status_code", None)
        if status in (401, 403):
            # The server's message may echo (part of) the key, e.g. "Incorrect API key provided: sk-ab***yz".
            return f"{type(err).__name__} (HTTP {status}): check the key in ${self.config.api_key_env}"
        message = " ".join(str(err).split())[:300]
        if self.client.api_key and self.client.api_key != DUMMY_KEY:
            message = message.replace(self.client.api_key, "***")
        return f"{type(err).__name__}" + (f" (HTTP {status})" if status else "") + f": {message}"

    def close(self) -> None:
        self.client.close()


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers that differ by at most one and sum to `total`."""
    if parts == 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
