"""Question preference optimization (QPO, paper §2.2): DPO of the QFT model on qpo-data's pairs.

TRL's DPOTrainer does the training; the reference model is the QFT model itself (the model we start from:
TRL keeps a frozen copy, or with LoRA the base with adapters disabled). Paper defaults (code): sigmoid
loss, beta 0.1, lr 5e-7, batch 128, 1 epoch, cosine, 20 warmup steps, max length 1024. TRL logs
rewards/chosen, rewards/rejected, rewards/margins and rewards/accuracies; they land in the manifest's
log_history.

The prompt is the raw pre-query prefix and chosen/rejected are question + end-of-turn, tokenized exactly
like QFT's training text (qft.split_tokens): TRL's own tokenization of text prompts would add BOS a
second time for templates that write it, and append EOS after an end-of-turn that is not EOS.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from pydantic import Field, model_validator

from scalequest import io
from scalequest.models import load_tokenizer, resolve_model
from scalequest.stages.qft import split_tokens
from scalequest.stages.qpo_data import normalized
from scalequest.training import TrainingConfig, default_bf16, peft_config, run_training, trainer_arguments

log = logging.getLogger(__name__)

PAIR_FIELDS = ("prompt", "chosen", "rejected")


class QPOConfig(TrainingConfig):
    """Question preference optimization: DPO (TRL DPOTrainer) of the QFT model on qpo-data pairs, the QFT model as
    the reference."""

    stage = "qpo"
    arguments_class = "trl:DPOConfig"

    model: str = Field("embedded", description="The QFT model to align; it is also the frozen DPO reference.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs (paper: 1).")
    learning_rate: float = Field(5e-7, gt=0, description="Peak learning rate (paper: 5e-7).")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of steps spent warming up; use either this or warmup_steps."
    )
    warmup_steps: int = Field(
        20, ge=0, description="Optimizer steps spent warming up linearly (paper code: 20); 0 to use warmup_ratio."
    )
    batch_size: int = Field(8, ge=1, description="Pairs per device per step.")
    gradient_accumulation_steps: int = Field(
        16,
        ge=1,
        description="Steps accumulated per update; effective batch = batch_size x this x devices (paper: 128).",
    )
    max_length: int = Field(
        1024, ge=8, description="Longest prompt + question in tokens (paper code: 1024); longer pairs are cut by TRL."
    )
    beta: float = Field(
        0.1, gt=0, description="DPO beta: how far the policy may move from the reference (paper code: 0.1)."
    )
    loss_type: str = Field("sigmoid", description="TRL DPO loss (paper: sigmoid, the original DPO loss).")
    precompute_reference: bool = Field(
        False,
        description="Compute the reference log-probs once before training, so the reference model need not stay in "
        "memory.",
    )

    @model_validator(mode="after")
    def one_warmup(self) -> "QPOConfig":
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("set either warmup_steps or warmup_ratio, not both (warmup_steps=0 selects warmup_ratio)")
        return self


def read_pairs(source: Path) -> tuple[list[dict], Counter]:
    """Usable pairs of a qpo-data output (or any prompt/chosen/rejected rows), and how many were skipped why."""
    pairs, skipped = [], Counter()
    for row in io.read_rows(source):
        for name in PAIR_FIELDS:
            if not isinstance(row.get(name), str):
                raise io.DataError(f"input {source}: row {row['id']} has no text field {name!r}")
        if not all(row[name].strip() for name in PAIR_FIELDS):
            skipped["empty"] += 1
        elif normalized(row["chosen"]) == normalized(row["rejected"]):
            skipped["identical"] += 1
        else:
            pairs.append(row)
    if not pairs:
        detail = ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "no rows"
        raise io.DataError(f"input {source} holds no usable preference pair ({detail}); nothing to train on")
    return pairs, skipped


def build_dataset(pairs: list[dict], end: str):
    """prompt = the pre-query prefix; chosen/rejected = question + end-of-turn, as in QFT's training text."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": p["prompt"], "chosen": p["chosen"].strip() + end, "rejected": p["rejected"].strip() + end}
            for p in pairs
        ]
    )


def question_dpo_trainer_class():
    """DPOTrainer that tokenizes pairs like QFT does; built lazily so importing this module stays light."""
    from trl import DPOTrainer

    class QuestionDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            tokenizer = self._tokenizer

            def tokenize(example: dict) -> dict:
                prompt_ids, (chosen_ids, rejected_ids) = split_tokens(
                    tokenizer, example["prompt"], [example["chosen"], example["rejected"]]
                )
                return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}

            dataset = dataset.map(tokenize, remove_columns=dataset.column_names)
            # As TRL does: a prompt that fills max_length leaves no completion token to learn from.
            if args.max_length is not None:
                dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
            return dataset

    return QuestionDPOTrainer


def run(config: QPOConfig, force: bool = False) -> dict:
    pairs: list[dict] = []
    loaded: dict = {}

    def check() -> None:
        """Everything that can fail on bad input, before the output folder is touched."""

        from scalequest.templates import end_of_turn

        loaded["source"] = resolve_model(config.model, config.revision)
        found, skipped = read_pairs(config.input)
        if skipped:
            log.warning(
                "qpo: skipped %s of %d rows in %s", dict(skipped), len(found) + sum(skipped.values()), config.input
            )
        pairs.extend(found)
        loaded["tokenizer"] = load_tokenizer(loaded["source"], config.trust_remote_code)
        try:
            loaded["end"] = end_of_turn(loaded["tokenizer"])
        except ValueError as err:
            raise io.DataError(f"model {config.model}: {err}") from None

    def build_trainer():
        from trl import DPOConfig

        args = trainer_arguments(
            config,
            DPOConfig,
            **({"warmup_steps": config.warmup_steps} if config.warmup_steps else {}),
            beta=config.beta,
            loss_type=[config.loss_type],
            max_length=config.max_length,
            precompute_ref_log_probs=config.precompute_reference,
            # float32 master weights unless training in bf16 (bf16 weights train slower on CPUs).
            model_init_kwargs={
                "trust_remote_code": config.trust_remote_code,
                "dtype": "bfloat16" if default_bf16(config) else "float32",
            },
        )
        return question_dpo_trainer_class()(
            model=loaded["source"],
            args=args,
            train_dataset=build_dataset(pairs, loaded["end"]),
            processing_class=loaded["tokenizer"],
            peft_config=peft_config(config),
        )

    return run_training(config, build_trainer, force=force, check=check)
