"""transformers `generate`, batched with left padding over prompts sorted by length."""

from __future__ import annotations

import logging
from functools import lru_cache

from scalequest import progress
from scalequest.config import EngineConfig
from scalequest.engines.base import (
    Completion,
    Engine,
    Prompt,
    SamplingParams,
    model_context_length,
    render_prompt,
    truncate_at_stop,
)
from scalequest.models import ModelError

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """bf16 matmuls are fast only with native support (AVX-512 BF16 or AMX); elsewhere float32 wins."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if cpu_has_bf16() else "float32"
    return device, getattr(torch, dtype)


def load_causal_lm(config: EngineConfig):
    """Tokenizer (left padding, with a pad token) and model in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = pick_device_and_dtype(config.device, config.dtype)
    source = config.model_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path(), trust_remote_code=config.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=config.trust_remote_code, **config.engine_kwargs
        )
    except (OSError, ValueError) as err:  # transformers raises either for a missing or unusable model
        raise ModelError(f"cannot load model {config.model!r}: {str(err).splitlines()[0]}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval()


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt text; a chat-rendered text already carries BOS, so do not add it twice."""
    has_bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
    return tokenizer(text, add_special_tokens=not has_bos)["input_ids"]


class HFEngine(Engine):
    def __init__(self, config: EngineConfig):
        super().__init__()
        self.config = config
        self.tokenizer, self.model = load_causal_lm(config)
        on_gpu = self.model.device.type == "cuda"
        self.gpus = 1 if on_gpu else 0
        self.batch_size = config.batch_size or (64 if on_gpu else 16)
        # Prompt and completion together must fit here (None: the model does not say).
        self.context = model_context_length(self.model.config, self.tokenizer)

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        import torch
        from tqdm.auto import tqdm

        tokenizer = self.tokenizer
        encoded = [encode(tokenizer, render_prompt(tokenizer, p)) for p in prompts]
        # Stop strings that are one token (end-of-turn, EOS) stop cheaply as EOS ids; longer ones go
        # through transformers' stop-string matcher and are cut from the text afterwards.
        stop_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        long_stops = []
        for stop in params.stop:
            ids = tokenizer.encode(stop, add_special_tokens=False)
            if len(ids) == 1:
                stop_ids.add(ids[0])
            else:
                long_stops.append(stop)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[list[Completion]] = [[] for _ in prompts]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        limits = self._new_token_limits(batches, [len(ids) for ids in encoded], params.max_new_tokens)
        for batch_index, (batch, max_new_tokens) in enumerate(
            tqdm(
                list(zip(batches, limits)),
                desc="generate",
                unit="batch",
                leave=False,
                disable=len(batches) < 2 or progress.inner_bars_hidden(),  # a stage's view counts the rows
            )
        ):
            if params.seed is not None:
                torch.manual_seed(params.seed + batch_index)
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(
                self.model.device
            )
            sampling = params.temperature > 0
            kwargs = dict(temperature=params.temperature, top_p=params.top_p) if sampling else {}
            if long_stops:
                kwargs.update(stop_strings=long_stops, tokenizer=tokenizer)
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    do_sample=sampling,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=params.n,
                    eos_token_id=sorted(stop_ids),
                    pad_token_id=tokenizer.pad_token_id,
                    **kwargs,
                )
            generated = output[:, inputs["input_ids"].shape[1] :].tolist()
            for row, token_ids in enumerate(generated):
                index = batch[row // params.n]
                completion = self._completion(token_ids, len(encoded[index]), stop_ids, params, max_new_tokens)
                results[index].append(completion)
        return self._count(results)

    def _new_token_limits(self, batches: list[list[int]], lengths: list[int], max_new_tokens: int) -> list[int]:
        """max_new_tokens for each batch, so that its longest prompt and the completion fit in the model's
        context; with context_overflow=error, a ModelError rather than less than was asked for."""
        if self.context is None or not lengths:
            return [max_new_tokens] * len(batches)
        longest = max(lengths)
        if longest >= self.context:  # not one token of room: clamping cannot help
            raise ModelError(
                f"a prompt of {longest} tokens fills the {self.context}-token context of model {self.config.model!r}; "
                "shorten the prompt"
            )
        if longest + max_new_tokens > self.context and self.config.context_overflow == "error":
            raise ModelError(
                f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceed the {self.context}-token "
                f"context of model {self.config.model!r}; lower sampling.max_new_tokens or set "
                "engine.context_overflow: clamp"
            )
        # Left padding lines every prompt of a batch up with its longest one, so that one sets the room.
        limits = [min(max_new_tokens, self.context - max(lengths[i] for i in batch)) for batch in batches]
        clamped = sum(len(batch) for batch, limit in zip(batches, limits) if limit < max_new_tokens)
        if clamped:
            log.warning(
                "%d of %d prompts + max_new_tokens %d exceed the %d-token context of model %r; generating at most "
                "%d new tokens for them",
                clamped,
                len(lengths),
                max_new_tokens,
                self.context,
                self.config.model,
                min(limits),
            )
        return limits

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _completion(
        self, token_ids: list[int], prompt_tokens: int, stop_ids: set[int], params: SamplingParams, max_new_tokens: int
    ) -> Completion:
        """One generated row: text cut at its first stop, and the tokens it took to get there.

        A row ends at a stop id (EOS, end-of-turn: counted, hidden by decode), at the end of a stop string, or at
        max_new_tokens, and is padded while the rest of its batch goes on. The pad may be the EOS (models without a
        pad token), so a row that ended on a stop string can look as if it ended on an EOS: the stop strings are
        therefore cut from every row, wherever it seems to end.
        """
        end = next((i + 1 for i, t in enumerate(token_ids) if t in stop_ids), None)
        if end is not None:
            token_ids = token_ids[:end]
        text, stopped = truncate_at_stop(self._decode(token_ids), params.stop)
        if stopped:
            return Completion(text, prompt_tokens, self._tokens_through_stop(token_ids, params.stop), "stop")
        if end is not None:
            return Completion(text, prompt_tokens, end, "stop")
        pad = self.tokenizer.pad_token_id
        while token_ids and token_ids[-1] == pad:  # finished on something the text does not show, then padded
            token_ids = token_ids[:-1]
        finish = "stop" if len(token_ids) < max_new_tokens else "length"
        return Completion(text, prompt_tokens, len(token_ids), finish)

    def _tokens_through_stop(self, token_ids: list[int], stop: tuple[str, ...]) -> int:
        """The fewest leading tokens whose text holds a stop string (`token_ids`' text holds one), found by
        bisection: a row's text grows with its tokens, and any padding after the stop string is left out."""
        low, high = 1, len(token_ids)
        while low < high:
            middle = (low + high) // 2
            if truncate_at_stop(self._decode(token_ids[:middle]), stop)[1]:
                high = middle
            else:
                low = middle + 1
        return low

    def close(self) -> None:
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
