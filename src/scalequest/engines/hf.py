"""Generation with transformers models: the sequences of one call decoded together, each leaving the batch as
soon as it ends and a waiting prompt taking its place (continuous batching over a shared, left-padded KV cache)."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
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


@dataclass
class Row:
    """One sequence being generated: the prompt it answers, the new tokens it may take and those it has."""

    index: int
    limit: int
    ids: list[int] = field(default_factory=list)


class Batch:
    """The sequences decoded together, left-padded in one KV cache, so that a sequence that ends leaves at once and
    a new prompt can take its place: no sequence keeps a batch generating padding until its longest one ends.

    `mask` (sequences x cache length) is 1 where a sequence has a real token; `positions` holds the position of
    each sequence's next token and `logits` its next-token logits. Entering needs every cache layer to be a plain
    `DynamicLayer` (keys and values of shape batch x heads x length x dim); for other caches (sliding windows)
    prompts enter only an empty batch, and ended sequences still leave it.
    """

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.rows: list[Row] = []
        self.cache = self.mask = self.positions = self.logits = None
        self.mergeable = True
        # Prefill computes logits for the last position only, where the model allows it (saves vocab x length).
        parameters = inspect.signature(model.forward).parameters
        self.prefill_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def can_enter(self) -> bool:
        return self.mergeable or not self.rows

    def enter(self, prompts: list[list[int]], index: list[int], limits: list[int], n: int) -> None:
        """Prefill `prompts` (n sequences each) and add them to the batch."""
        import torch
        from transformers import Cache, DynamicLayer

        device, width = self.model.device, max(map(len, prompts))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **self.prefill_kwargs,
        )
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        if not isinstance(cache, Cache):
            raise ModelError(f"model {type(self.model).__name__} returns no transformers Cache; use engine: vllm")
        if n > 1:  # one prefill per prompt, its cache repeated for each sample
            cache.batch_repeat_interleave(n)
            mask, logits = mask.repeat_interleave(n, 0), logits.repeat_interleave(n, 0)
        rows = [Row(i, limit) for i, limit in zip(index, limits) for _ in range(n)]
        if not self.rows:
            self.cache, self.mask, self.logits, self.rows = cache, mask, logits, rows
            self.positions = mask.sum(-1)
            self.mergeable = all(type(layer) is DynamicLayer for layer in cache.layers)
            return
        width = max(width, self.mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([left_pad(old.keys, width, -2), left_pad(new.keys, width, -2)])
            old.values = torch.cat([left_pad(old.values, width, -2), left_pad(new.values, width, -2)])
        self.mask = torch.cat([left_pad(self.mask, width, -1), left_pad(mask, width, -1)])
        self.positions = torch.cat([self.positions, mask.sum(-1)])
        self.logits = torch.cat([self.logits, logits])
        self.rows += rows

    def leave(self, ended: list[int]) -> None:
        """Drop the sequences at these places, and the cache columns only they used."""
        import torch

        gone = set(ended)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.positions = self.logits = None
            return
        keep = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(keep)
        self.mask, self.positions, self.logits = self.mask[keep], self.positions[keep], self.logits[keep]
        start = int((self.mask.sum(0) > 0).int().argmax())  # left padding: the first column still in use
        if start and self.mergeable:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def step(self) -> None:
        """Feed every sequence its latest token; `logits` become those of the token after."""
        import torch

        tokens = torch.tensor([[row.ids[-1]] for row in self.rows], device=self.mask.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        out = self.model(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.logits = out.logits[:, -1].float()
        self.positions = self.positions + 1


def left_pad(tensor, width: int, dim: int):
    """`tensor` padded with zeros before its entries along `dim` (-1 or -2) up to `width`."""
    import torch.nn.functional as F

    missing = width - tensor.shape[dim]
    return F.pad(tensor, (missing, 0) if dim == -1 else (0, 0, missing, 0)) if missing else tensor


# Nucleus candidates looked at, in turn, before the whole sorted vocabulary: sorting 49k-152k entries per sequence
# costs more than a small model's forward step on a CPU, and the nucleus nearly always lies within the most likely
# few thousand tokens.
TOP_P_CANDIDATES = (1024, 8192)


def sample(logits, params: SamplingParams, generator):
    """Next token of each sequence: greedy at temperature 0, else temperature and top-p with the semantics of
    transformers' TopPLogitsWarper (a token is kept while the tokens more likely than it hold less than top_p).

    The nucleus is taken from the first of TOP_P_CANDIDATES' most likely tokens that hold top_p for every sequence,
    else from the whole sorted vocabulary: the same tokens either way. The draw inverts the cumulative
    distribution with one uniform number per sequence (torch.multinomial over a whole vocabulary costs more).
    """
    import torch

    if params.temperature <= 0:
        return logits.argmax(-1)
    probs = (logits / params.temperature).softmax(-1)
    index = None
    if params.top_p < 1:
        vocab = probs.shape[-1]
        for size in TOP_P_CANDIDATES:
            probs_top, index = probs.topk(min(size, vocab))
            if size >= vocab or not bool((probs_top.sum(-1) < params.top_p).any()):
                break
        else:
            probs_top, index = probs.sort(-1, descending=True)
        probs = probs_top * ((probs_top.cumsum(-1) - probs_top) < params.top_p)
    cumulative = probs.cumsum(-1)
    draw = torch.rand(len(probs), 1, generator=generator, device=probs.device) * cumulative[:, -1:]
    choice = torch.searchsorted(cumulative, draw, right=True).clamp(max=probs.shape[-1] - 1)
    return (choice if index is None else index.gather(1, choice)).squeeze(1)


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
        # Stop strings that are one token (end-of-turn, EOS) stop cheaply as EOS ids; longer ones are looked for
        # in the text of each sequence's last tokens, and cut from the text afterwards.
        stop_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        long_stops: list[str] = []
        for stop in params.stop:
            ids = tokenizer.encode(stop, add_special_tokens=False)
            if len(ids) == 1:
                stop_ids.add(ids[0])
            else:
                long_stops.append(stop)
        # A stop string of c characters lies within a sequence's last c + 1 tokens (one more for a character split
        # across two tokens).
        stop_tail = max(map(len, long_stops), default=0) + 1
        limits = self._new_token_limits([len(ids) for ids in encoded], params.max_new_tokens)
        # Prompts of similar length enter together, so they are padded little.
        pending = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.model.device).manual_seed(params.seed)
        batch = Batch(self.model, tokenizer.pad_token_id)
        results: list[list[Completion]] = [[] for _ in prompts]
        bar = tqdm(
            total=len(prompts) * params.n,
            desc="generate",
            unit="seq",
            leave=False,
            disable=len(prompts) <= self.batch_size or progress.inner_bars_hidden(),  # a stage's view counts rows
        )
        with torch.inference_mode(), bar:
            while pending or batch.rows:
                # Sequences that ended have left the batch; new prompts take their places once a quarter of
                # the places are free (each entry costs a prefill and a copy of the cache).
                free = self.batch_size - len(batch.rows)
                if pending and (free >= max(1, self.batch_size // 4) or not batch.rows) and batch.can_enter():
                    entering = [pending.pop() for _ in range(min(len(pending), max(1, free // params.n)))]
                    batch.enter([encoded[i] for i in entering], entering, [limits[i] for i in entering], params.n)
                tokens = sample(batch.logits, params, generator).tolist()
                ended = []
                for position, (row, token) in enumerate(zip(batch.rows, tokens)):
                    row.ids.append(token)
                    stopped = token in stop_ids or (long_stops and self._holds_stop(row.ids[-stop_tail:], long_stops))
                    if stopped or len(row.ids) >= row.limit:
                        ended.append(position)
                        completion = self._completion(row.ids, len(encoded[row.index]), stop_ids, params, row.limit)
                        results[row.index].append(completion)
                if ended:
                    batch.leave(ended)
                    bar.update(len(ended))
                if batch.rows:
                    batch.step()
        return self._count(results)

    def _holds_stop(self, tail: list[int], stops: list[str]) -> bool:
        """Whether the text of a sequence's last tokens holds a stop string."""
        text = self._decode(tail)
        return any(s in text for s in stops)

    def _new_token_limits(self, lengths: list[int], max_new_tokens: int) -> list[int]:
        """max_new_tokens for each prompt, so that the prompt and its completion fit in the model's context; with
        context_overflow=error, a ModelError rather than less than was asked for."""
        if self.context is None or not lengths:
            return [max_new_tokens] * len(lengths)
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
        limits = [min(max_new_tokens, self.context - length) for length in lengths]
        clamped = sum(limit < max_new_tokens for limit in limits)
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
        """One generated sequence: text cut at its first stop, and the tokens it took to get there.

        A sequence ends at a stop id (EOS, end-of-turn: counted, hidden by decode), at the end of a stop string, or
        at max_new_tokens.
        """
        end = next((i + 1 for i, t in enumerate(token_ids) if t in stop_ids), None)
        if end is not None:
            token_ids = token_ids[:end]
        text, stopped = truncate_at_stop(self._decode(token_ids), params.stop)
        if stopped:
            return Completion(text, prompt_tokens, self._tokens_through_stop(token_ids, params.stop), "stop")
        finish = "stop" if end is not None or len(token_ids) < max_new_tokens else "length"
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
