"""transformers `generate`, batched with left padding over prompts sorted by length."""

from __future__ import annotations

from functools import lru_cache

from scalequest.config import EngineConfig
from scalequest.engines.base import Completion, Engine, Prompt, SamplingParams, render_prompt, truncate_at_stop
from scalequest.models import ModelError


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
        for batch_index, batch in enumerate(
            tqdm(batches, desc="generate", unit="batch", leave=False, disable=len(batches) < 2)
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
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=params.n,
                    eos_token_id=sorted(stop_ids),
                    pad_token_id=tokenizer.pad_token_id,
                    **kwargs,
                )
            generated = output[:, inputs["input_ids"].shape[1] :].tolist()
            for row, token_ids in enumerate(generated):
                index = batch[row // params.n]
                results[index].append(self._completion(token_ids, len(encoded[index]), stop_ids, params))
        return self._count(results)

    def _completion(
        self, token_ids: list[int], prompt_tokens: int, stop_ids: set[int], params: SamplingParams
    ) -> Completion:
        end = next((i for i, t in enumerate(token_ids) if t in stop_ids), None)
        if end is not None:
            text = self.tokenizer.decode(token_ids[:end], skip_special_tokens=True)
            return Completion(text, prompt_tokens, end + 1, "stop")
        pad = self.tokenizer.pad_token_id
        while token_ids and token_ids[-1] == pad:  # finished early through a stop string, then padded
            token_ids = token_ids[:-1]
        text, stopped = truncate_at_stop(self.tokenizer.decode(token_ids, skip_special_tokens=True), params.stop)
        finish = "stop" if stopped or len(token_ids) < params.max_new_tokens else "length"
        return Completion(text, prompt_tokens, len(token_ids), finish)

    def close(self) -> None:
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
