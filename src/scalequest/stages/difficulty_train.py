"""difficulty-train (paper §2.3): a regressor that predicts a question's fail rate.

A causal LM base with a 1-output head (MSE loss; paper: DeepSeekMath-7B-Base) learns question -> fail_rate
from difficulty-label's rows with the transformers Trainer. A seeded held-out split gives MSE and Spearman
correlation in the manifest.
"""

from __future__ import annotations

import json
import logging
import math
import random
from typing import Any

from pydantic import Field

from scalequest import io
from scalequest.models import load_tokenizer, resolve_model
from scalequest.training import TrainingConfig, default_bf16, peft_config, run_training, trainer_arguments

log = logging.getLogger(__name__)


class DifficultyTrainConfig(TrainingConfig):
    """Train a difficulty regressor (sequence classification, 1 output, MSE) on questions and fail rates."""

    stage = "difficulty-train"

    model: str = Field(
        "embedded",
        description="Base model to put a regression head on: HF id, local directory or 'embedded' (paper: "
        "DeepSeekMath-7B-Base).",
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the training split (ours; the paper gives none).")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (ours; the paper gives none).")
    batch_size: int = Field(8, ge=1, description="Examples per device per step.")
    max_length: int = Field(
        512,
        ge=8,
        description="Longest tokenized question; longer ones are truncated (give filter-difficulty the same "
        "max_length).",
    )
    question_field: str = Field("question", description="Input field holding the question.")
    label_field: str = Field("fail_rate", description="Input field holding the number to predict.")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of rows held out (seeded by `seed`) for MSE and Spearman in the manifest."
    )


def read_labelled(config: DifficultyTrainConfig) -> list[dict]:
    """Training rows; a row without question text or a finite numeric label is named by id."""
    rows = []
    for row in io.read_rows(config.input):
        question, label = row.get(config.question_field), row.get(config.label_field)
        if not isinstance(question, str) or not question.strip():
            raise io.DataError(f"input {config.input}: row {row['id']} has no text in field {config.question_field!r}")
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise io.DataError(
                f"input {config.input}: row {row['id']} has no number in field {config.label_field!r} (got {label!r})"
            )
        rows.append({"question": question, "label": float(label)})
    held_out = held_out_count(len(rows), config.eval_fraction)
    if len(rows) - held_out < 1:
        raise io.DataError(
            f"input {config.input} holds {len(rows)} rows: too few to train on with eval_fraction "
            f"{config.eval_fraction}"
        )
    return rows


def held_out_count(rows: int, fraction: float) -> int:
    """Rows held out: the fraction rounded, at least 1 when any are asked for and 2+ rows exist."""
    if fraction <= 0 or rows < 2:
        return 0
    return min(rows - 1, max(1, round(rows * fraction)))


def split_rows(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[: held_out_count(len(rows), fraction)])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def rank(values) -> Any:
    """Ranks from 0, ties sharing their average rank (as Spearman's correlation needs)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, groups, sizes = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(groups, weights=ranks) / sizes)[groups]


def spearman(predictions, labels) -> float | None:
    """Spearman's rank correlation; None when either side is constant (it is undefined then)."""
    import numpy as np

    a, b = rank(predictions), rank(labels)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(eval_prediction) -> dict[str, float | None]:
    import numpy as np

    predictions = np.asarray(eval_prediction.predictions, dtype=float).reshape(-1)
    labels = np.asarray(eval_prediction.label_ids, dtype=float).reshape(-1)
    return {"mse": float(np.mean((predictions - labels) ** 2)), "spearman": spearman(predictions, labels)}


def build_regression_trainer(config: DifficultyTrainConfig):
    """A transformers Trainer for a 1-output regression head, with the held-out split as its eval set."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    class RegressionTrainer(Trainer):
        """Scores the held-out split once training ends, so its MSE and Spearman land in the log history."""

        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            if self.eval_dataset is not None and len(self.eval_dataset):
                self.evaluate()
            return result

    source = resolve_model(config.model, config.revision)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    prepare_tokenizer(tokenizer)
    bf16 = default_bf16(config)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=1,
        problem_type="regression",
        trust_remote_code=config.trust_remote_code,
        # float32 master weights unless training in bf16 (bf16 weights train slower on CPUs).
        dtype="bfloat16" if bf16 else "float32",
    )
    # The head pools the last token that is not padding, so the model must know the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = peft_config(config, task_type="SEQ_CLS")
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora)

    def encode(rows: list[dict]):
        encoded = tokenizer([r["question"] for r in rows], truncation=True, max_length=config.max_length)
        return Dataset.from_dict({**encoded, "labels": [r["label"] for r in rows]})

    train, held_out = split_rows(read_labelled(config), config.eval_fraction, config.seed)
    args = trainer_arguments(
        config, TrainingArguments, per_device_eval_batch_size=config.batch_size, eval_strategy="no"
    )
    return RegressionTrainer(
        model=model,
        args=args,
        train_dataset=encode(train),
        eval_dataset=encode(held_out) if held_out else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=regression_metrics,
    )


def prepare_tokenizer(tokenizer) -> None:
    """Right padding with a pad token: real tokens keep the positions they have when scored one by one."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def train_regressor(config: DifficultyTrainConfig, force: bool = False) -> dict:
    """Run difficulty-train; the manifest gains `held_out`: rows, MSE and Spearman of the held-out split."""

    def check() -> None:
        resolve_model(config.model, config.revision)
        labels = {row["label"] for row in read_labelled(config)}
        if len(labels) == 1:  # e.g. a small solver that fails every question: nothing to rank by
            log.warning(
                "%s: every row of %s has %s = %g; the regressor can only learn a constant",
                config.stage,
                config.input,
                config.label_field,
                labels.pop(),
            )

    def add_held_out(manifest: dict) -> dict:
        if "held_out" not in manifest:
            # run_training writes its own manifest; the held-out metrics are in its log history, lifted
            # to the top here (again on a rerun, should a kill have come between the two writes).
            scores = next((e for e in reversed(manifest["log_history"]) if "eval_mse" in e), {})
            rows = held_out_count(sum(1 for _ in io.read_rows(config.input)), config.eval_fraction)
            manifest["held_out"] = {
                "rows": rows,
                "mse": scores.get("eval_mse"),
                "spearman": scores.get("eval_spearman"),
            }
            io.atomic_write_text(config.output / io.MANIFEST, json.dumps(manifest, indent=2, default=str))
        return manifest

    return run_training(
        config, lambda: build_regression_trainer(config), force=force, check=check, complete=add_held_out
    )
