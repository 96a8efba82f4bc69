"""Scoring with a one-output sequence-classification model: the difficulty regressor and reward models.

Both read `logits[:, 0]` of an AutoModelForSequenceClassification over token ids, and share everything on
the way there: reading the config to check for a score head before anything is loaded, loading the model
with its trained head, right padding with a pad id the model knows, truncation to the model's context and
length-sorted batches. `ClassifierScorer` is the reward-select face of it (conversations in).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from scalequest.engines.base import model_context_length
from scalequest.models import ModelError, resolve_model
from scalequest.scorers.base import Conversation, Scorer, default_batch_size, load_reward_tokenizer, render_ids

log = logging.getLogger(__name__)

# A batch holds inputs at most this much shorter than its longest (as a share of that length).
MAX_PADDING = 0.1


def first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_model_config(
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    what: str = "model",
    trust_setting: str | None = None,
):
    """(location, config) of a model, read without loading weights; one ModelError line when it cannot be read.
    With `trust_setting`, a model that ships its own code is refused with the setting that allows it."""
    from transformers import AutoConfig

    source = resolve_model(name, revision)
    try:
        return source, AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if trust_setting and "trust_remote_code" in str(err) and not trust_remote_code:
            raise ModelError(f"{what} {name!r} ships its own code; set {trust_setting}: true if you trust it") from None
        raise ModelError(f"cannot load {what} {name!r}: {first_line(err)}") from None


def architectures(model_config) -> list[str]:
    return list(getattr(model_config, "architectures", None) or [])


def head_outputs(model_config) -> int | None:
    """Outputs of the sequence-classification head, None when the architecture has none.

    A causal LM loads fine as AutoModelForSequenceClassification -- with a random score head and a warning
    only -- so the architecture is checked before anything is scored.
    """
    if any(name.endswith("ForSequenceClassification") for name in architectures(model_config)):
        return model_config.num_labels
    return None


def load_classifier(
    source: str,
    name: str,
    what: str = "model",
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    model_kwargs: dict | None = None,
):
    """The model at `source` in eval mode on its device; ModelError when its weights hold no trained head."""
    from transformers import AutoModelForSequenceClassification

    from scalequest.engines.hf import pick_device_and_dtype

    device, dtype = pick_device_and_dtype(device, dtype)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True, **(model_kwargs or {})
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load {what} {name!r}: {first_line(err)}") from None
    # The config says classifier, but a causal LM's weights under it leave the head random: scores would be noise.
    head_missing = [key for key in info.get("missing_keys", []) if not key.startswith(("model.", "transformer."))]
    if head_missing:
        raise ModelError(
            f"{what} {name!r} has no trained score head (missing {head_missing[0]!r}); use a trained {what}"
        )
    return model.to(device).eval()


def use_padding(model, tokenizer) -> bool:
    """Right padding with one pad id for tokenizer and model; False when neither has a pad token.

    The head pools the last token that is not padding, so the model must know the pad id; right padding
    keeps every real token at the position it has when scored alone.
    """
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None and model.config.pad_token_id is not None:
        tokenizer.pad_token_id = model.config.pad_token_id
    if tokenizer.pad_token_id is None:
        return False
    model.config.pad_token_id = tokenizer.pad_token_id
    return True


def context_length(model, max_length: int | None = None) -> int | None:
    """Longest input to score: `max_length` when given, never more than the model's positions."""
    limits = [n for n in (max_length, model_context_length(model.config)) if n]
    return min(limits) if limits else None


def length_batches(lengths: list[int], size: int, max_padding: float | None = MAX_PADDING) -> Iterator[list[int]]:
    """Indices longest first, in batches of up to `size` whose shortest member is at most `max_padding` shorter
    than the longest (None: no such cap). Similar lengths share a batch, so padding wastes little work (on a CPU
    it is all waste: a batch is no faster per token than one input); a batch too big for memory fails at once."""
    batch: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batch and (
            len(batch) == size
            or (max_padding is not None and lengths[batch[0]] - lengths[index] > max_padding * lengths[batch[0]])
        ):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def score_ids(
    model, tokenizer, encoded: list[list[int]], batch_size: int, max_padding: float | None = MAX_PADDING
) -> list[float]:
    """`logits[:, 0]` for each token-id list, in input order; lists longer than the model's context are cut."""
    import torch

    context = context_length(model)
    if context is not None and any(len(ids) > context for ids in encoded):
        cut = sum(len(ids) > context for ids in encoded)
        log.warning(
            "%d of %d inputs are longer than the model's %d positions; scoring their first %d tokens",
            cut,
            len(encoded),
            context,
            context,
        )
        encoded = [ids[:context] for ids in encoded]
    scores = [0.0] * len(encoded)
    for batch in length_batches([len(ids) for ids in encoded], batch_size, max_padding):
        if len(batch) == 1:  # no padding needed, so a model without a pad token scores too
            inputs = {"input_ids": torch.tensor([encoded[batch[0]]])}
        else:
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
        inputs = {key: value.to(model.device) for key, value in inputs.items()}
        with torch.inference_mode():
            logits = model(**inputs, use_cache=False).logits
        for index, value in zip(batch, logits[:, 0].float().tolist()):
            scores[index] = value
    return scores


def score_texts(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int,
    max_length: int | None = None,
    max_padding: float | None = MAX_PADDING,
) -> list[float]:
    """`logits[:, 0]` for each text, in order (tokenized as `encode_texts` does)."""
    return score_ids(model, tokenizer, encode_texts(model, tokenizer, texts, max_length), batch_size, max_padding)


def encode_texts(model, tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text as it is scored: the tokenizer truncates, as it did in training (it keeps the special
    tokens it adds), to `max_length` or the model's context."""
    if not texts:
        return []
    context = context_length(model, max_length)
    return tokenizer(texts, truncation=context is not None, max_length=context)["input_ids"]


class ClassifierScorer(Scorer):
    """A reward model with a one-output score head, over conversations rendered with its chat template."""

    def __init__(self, config):
        self.tokenizer = load_reward_tokenizer(config)
        self.model = load_classifier(
            resolve_model(config.model, config.revision),
            config.model,
            what="reward model",
            device=config.device,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            model_kwargs=config.engine_kwargs,
        )
        on_cuda = self.model.device.type == "cuda"
        self.gpus = int(on_cuda)
        self.batch_size = default_batch_size(config, on_cuda)
        if not use_padding(self.model, self.tokenizer):
            log.warning("reward model %s has no padding token; scoring one conversation at a time", config.model)
            self.batch_size = 1

    def score(self, conversations: list[Conversation]) -> list[float]:
        encoded = [render_ids(self.tokenizer, chat) for chat in conversations]
        self.tokens += sum(len(ids) for ids in encoded)
        return score_ids(self.model, self.tokenizer, encoded, self.batch_size)
