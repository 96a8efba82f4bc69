"""What every training stage (sft, qft, qpo, difficulty-train) shares: options, output folder, resume, save.

Training is done by TRL / transformers trainers; this module only maps our config onto their arguments,
checkpoints into OUTPUT/checkpoints so a killed run resumes from the last checkpoint, and saves the final
model (LoRA merged) as a plain model directory that every engine loads. Once the manifest is written the
checkpoints are deleted (unless `keep_checkpoints`): they hold the weights again plus the optimizer state,
about three times the model, and served only to resume.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shutil
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar

from pydantic import Field, field_validator

from scalequest import io
from scalequest.config import DataSource, Section, StageConfig
from scalequest.models import model_provenance
from scalequest.runner import (
    check_input_finished,
    check_output_apart_from_inputs,
    output_lock,
    package_versions,
    prepare_output,
)

log = logging.getLogger(__name__)


class LoraOptions(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA layers.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters ('all-linear' or a list of names)."
    )
    merge: bool = Field(
        True, description="Merge the adapters into the weights when saving, so every engine loads the result."
    )


class TrainingOptions(StageConfig):
    """Fields shared by training stages; `output` is the model directory."""

    model: str = Field("embedded", description="Model to train: HF id, local directory or 'embedded'.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `model`; default: main.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (cosine decays to 0).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    batch_size: int = Field(4, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Steps accumulated per optimizer update (effective batch = batch_size x this x devices)."
    )
    max_length: int = Field(2048, ge=8, description="Longest tokenized example; longer ones are truncated.")
    lora: LoraOptions | None = Field(
        None, description="Train LoRA adapters through PEFT instead of all weights (e.g. lora={r: 16})."
    )
    bf16: bool | None = Field(
        None,
        description="Train in bfloat16 mixed precision; default: on CUDA with bf16 support, off on CPU (float32 is "
        "faster there).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    seed: int = Field(42, description="Seed for data order and initialisation.")
    logging_steps: int = Field(10, ge=1, description="Log loss every this many steps.")
    save_steps: int = Field(500, ge=1, description="Checkpoint every this many steps (the unit of resume).")
    keep_checkpoints: bool = Field(
        False,
        description="Keep OUTPUT/checkpoints (weights and optimizer state) after training finishes; by default they "
        "are deleted, since they only serve to resume.",
    )
    trust_remote_code: bool = Field(False, description="Allow the model repository to run its own code.")
    trainer: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other field of the stage's trainer arguments (transformers TrainingArguments, TRL SFTConfig "
        "or "
        "DPOConfig), passed as is, e.g. {report_to: wandb, weight_decay: 0.01}; it overrides our defaults "
        "(OUR_TRAINER_DEFAULTS).",
    )

    # The trainer-arguments class of the stage, "module:Class", whose fields `trainer` may set.
    arguments_class: ClassVar[str] = "transformers:TrainingArguments"

    @field_validator("trainer")
    @classmethod
    def known_trainer_fields(cls, trainer: dict[str, Any]) -> dict[str, Any]:
        if not trainer:
            return trainer
        module, name = cls.arguments_class.split(":")
        known = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
        for key in trainer:
            if key in OWN_FIELDS:
                raise ValueError(f"{key} is set by this stage's field {OWN_FIELDS[key]!r}; set that instead")
            if key not in known:
                raise ValueError(f"{key} is not a {name} field")
        return trainer


class TrainingConfig(TrainingOptions):
    """A training stage that reads one `input` dataset (QFT reads several `sources` instead)."""

    input: DataSource = Field(
        ..., description="Training data: a stage's output folder or file, {bundled: NAME} or {hub: ID, ...}."
    )


# Where our trainer defaults differ from the library's (the one place they are listed); `trainer` overrides them.
OUR_TRAINER_DEFAULTS = {
    "report_to": "none",  # library: every installed integration (wandb, tensorboard, ...); ours: none unless asked
    "save_total_limit": 1,  # library: keep every checkpoint; ours: the last one, all that resuming needs
}

# Trainer arguments our own config fields set -> that field (a second way to set them would be ambiguous).
OWN_FIELDS = {
    "output_dir": "output",
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler",
    "warmup_steps": "warmup_ratio",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "bf16": "bf16",
    "activation_checkpointing": "gradient_checkpointing",
    "seed": "seed",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "disable_tqdm": "progress",
    "max_length": "max_length",
}


def default_bf16(config: TrainingOptions) -> bool:
    import torch

    if config.bf16 is not None:
        return config.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def peft_config(config: TrainingOptions, task_type: str = "CAUSAL_LM"):
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type=task_type,
    )


def trainer_arguments(config: TrainingOptions, arguments_class: type, **stage_arguments: Any):
    """The stage's trainer arguments: our fields mapped onto TrainingArguments' names, our defaults, the stage's
    own arguments (e.g. DPO's beta), then the user's `trainer` mapping."""
    common = dict(
        output_dir=str(config.output / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        # transformers 5 takes a float in [0, 1) in warmup_steps as a ratio of the total steps.
        warmup_steps=config.warmup_ratio,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        bf16=default_bf16(config),
        activation_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        disable_tqdm=not config.progress,
        # Pinned memory only helps copies to a GPU; on a CPU torch warns about it on every data loader.
        dataloader_pin_memory=gpu_count() > 0,
    )
    return arguments_class(**{**common, **OUR_TRAINER_DEFAULTS, **stage_arguments, **config.trainer})


def run_training(
    config: TrainingConfig,
    build_trainer: Callable[[], Any],
    force: bool = False,
    check: Callable[[], None] | None = None,
    fingerprint: str | None = None,
    entries: dict | None = None,
) -> dict:
    """Train with the trainer `build_trainer` returns, resuming from the last checkpoint; save, write the manifest.

    `fingerprint` identifies the training data (default: that of `config.input`); `entries` go into the manifest.
    """
    from accelerate import PartialState

    started = time.time()
    check_output_apart_from_inputs(config)
    check_input_finished(config)  # never train on what a killed or running stage left
    if check is not None:
        check()
    fingerprint = fingerprint or io.input_fingerprint(config.input)
    # Under `accelerate launch` every process runs this; only the main one touches the output folder.
    state = PartialState()
    with output_lock(config.output) if state.is_main_process else nullcontext():
        finished = prepare_output(config, fingerprint, force) if state.is_main_process else False
        state.wait_for_everyone()
        if finished or io.read_manifest(config.output) is not None:
            log.info("%s: already finished in %s; pass --force to retrain", config.stage, config.output)
            return io.read_manifest(config.output)
        return train(config, build_trainer, state, started, fingerprint, entries or {})


def train(config, build_trainer: Callable[[], Any], state, started: float, fingerprint: str, entries: dict) -> dict:
    from transformers.trainer_utils import get_last_checkpoint

    trainer = build_trainer()
    checkpoints = config.output / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        log.info("%s: resuming from %s", config.stage, last)
    result = trainer.train(resume_from_checkpoint=last)
    save_model(trainer, config)
    if not state.is_main_process:
        return {}
    return finish_training(
        config,
        trainer,
        result,
        started,
        {
            "input": str(config.input) if hasattr(config, "input") else None,
            "input_fingerprint": fingerprint,
            "rows_in": len(trainer.train_dataset),
            **entries,
        },
    )


def finish_training(config: TrainingOptions, trainer, result, started: float, entries: dict) -> dict:
    """Write the manifest (the stage's own `entries`, then steps, losses, time, devices), then drop the checkpoints."""
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    manifest = {
        "stage": config.stage,
        "config": config.model_dump(mode="json"),
        "config_hash": config.config_hash(),
        **entries,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
        "log_history": trainer.state.log_history,
        "wall_seconds": round(time.time() - started, 3),
        "devices": [device_name()],
        "models": model_provenance(config),
        "gpu_hours": round((time.time() - started) * gpu_count() / 3600, 6),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
    }
    io.atomic_write_text(config.output / io.MANIFEST, json.dumps(manifest, indent=2, default=str))
    # After the manifest: a kill during the deletion leaves a finished stage, never a half-deleted checkpoint to
    # resume from.
    if not config.keep_checkpoints:
        shutil.rmtree(config.output / "checkpoints", ignore_errors=True)
    return manifest


def gpu_count() -> int:
    """GPUs training on: every process of an accelerate/DeepSpeed launch holds one."""
    import torch

    from accelerate import PartialState

    return PartialState().num_processes if torch.cuda.is_available() else 0


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def save_model(trainer, config: TrainingOptions) -> None:
    """Save weights and tokenizer into the output folder itself (LoRA merged unless asked not to)."""
    if config.lora is None or not config.lora.merge:
        trainer.save_model(str(config.output))  # gathers sharded (DeepSpeed/FSDP) weights on the main process
    elif trainer.accelerator.is_main_process:
        trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(config.output)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(config.output)


def read_examples(source: DataSource, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a training input, each checked for the fields the stage needs (named by row id when missing)."""
    rows = []
    for row in io.read_rows(source):
        for name in fields:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise io.DataError(f"input {source}: row {row['id']} has no text in field {name!r}")
        rows.append(row)
    if not rows:
        raise io.DataError(f"input {source} holds no rows to train on")
    return rows
