"""A reward model that ships its own scoring code (InternLM2-7B-Reward): `get_scores(tokenizer, conversations)`.

Loaded with AutoModel and trust_remote_code, and called the way its model card does, so its code renders
and tokenizes the conversations itself.
"""

from __future__ import annotations

from scalequest.models import ModelError, resolve_model
from scalequest.scorers.base import Conversation, Scorer, default_batch_size, load_reward_tokenizer, no_score_head
from scalequest.scorers.sequence_classification import architectures, first_line, length_batches


class RemoteCodeScorer(Scorer):
    """A reward model whose own code scores conversations: `get_scores(tokenizer, conversations)`."""

    def __init__(self, config):
        from transformers import AutoModel

        from scalequest.engines.hf import pick_device_and_dtype

        device, dtype = pick_device_and_dtype(config.device, config.dtype)
        self.tokenizer = load_reward_tokenizer(config)
        try:
            model = AutoModel.from_pretrained(
                resolve_model(config.model, config.revision),
                dtype=dtype,
                trust_remote_code=True,
                **config.engine_kwargs,
            )
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load reward model {config.model!r}: {first_line(err)}") from None
        if not (hasattr(model, "get_scores") or hasattr(model, "get_score")):
            raise no_score_head(config.model, architectures(model.config) or [type(model).__name__])
        self.model = model.to(device).eval()
        self.gpus = int(device.startswith("cuda"))
        self.batch_size = default_batch_size(config, device.startswith("cuda"))

    def score(self, conversations: list[Conversation]) -> list[float]:
        import torch

        texts = [self.tokenizer.apply_chat_template(chat, tokenize=False) for chat in conversations]
        scores = [0.0] * len(texts)
        # Lengths in characters: its own code tokenizes.
        for batch in length_batches([len(text) for text in texts], self.batch_size):
            chats = [conversations[i] for i in batch]
            with torch.inference_mode():
                if hasattr(self.model, "get_scores"):
                    values = self.model.get_scores(self.tokenizer, chats)
                else:
                    values = [self.model.get_score(self.tokenizer, chat) for chat in chats]
            # InternLM2's get_scores squeezes its output, so a batch of one comes back as a bare float.
            values = [values] if isinstance(values, (int, float)) else list(values)
            for index, value in zip(batch, values, strict=True):
                scores[index] = float(value)
        self.tokens += sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        return scores
