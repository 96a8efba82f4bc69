"""What every training stage (sft, qft, qpo, difficulty-train) shares: options, output folder, resume, save.

Training is done by TRL / transformers trainers; this module only maps our config onto their arguments,
checkpoints into OUTPUT/checkpoints so a killed run resumes from the last checkpoint, and saves the final
model (LoRA merged) as a plain model directory that every engine loads. Once the manifest is written the
checkpoints are deleted (unless `keep_checkpoints`): they hold the weights again plus the optimizer state,
about three times the model, and served only to resume. With `push_to_hub` the finished folder (and a model card,
README.md) is then uploaded to a Hub model repo, also when the stage had already finished.
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
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import Field, field_validator

from scalequest import hub, io, progress
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
    push_to_hub: str | None = Field(
        None,
        description="Also upload the trained model (weights, tokenizer, config, manifest.json, config.yaml and a model "
        "card; not the checkpoints) to this Hub model repo (user/name), also when the stage had already finished; "
        "the token comes from the environment (HF_TOKEN), never from the config.",
    )
    private: bool = Field(
        False, description="Create the Hub repo as private (with push_to_hub); an existing repo keeps its visibility."
    )
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
    "disable_tqdm": "progress",  # transformers' bar is always off: our progress view shows the steps (`progress`)
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
        disable_tqdm=True,  # the progress view shows the steps, and a line per logging step (ProgressCallback)
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
    complete: Callable[[dict], dict] | None = None,
) -> dict:
    """Train with the trainer `build_trainer` returns, resuming from the last checkpoint; save, write the manifest;
    then, on the main process, `complete` the manifest (e.g. held-out scores) and push the model when asked.

    `fingerprint` identifies the training data (default: that of `config.input`); `entries` go into the manifest.
    `complete` runs on the finished manifest, also when the stage had already finished, and returns it (rewriting
    manifest.json itself when it adds to it).
    """
    from accelerate import PartialState

    started = time.time()
    if config.push_to_hub:  # a missing token fails now, not after hours of training
        hub.require_token(config.push_to_hub)
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
            manifest = io.read_manifest(config.output)
        else:
            with progress.stage_log(config.output, config.stage) if state.is_main_process else nullcontext():
                manifest = train(config, build_trainer, state, started, fingerprint, entries or {})
        if not state.is_main_process:
            return manifest
        if complete is not None:
            manifest = complete(manifest)
        if config.push_to_hub:
            push_model(config, manifest)
        return manifest


def train(config, build_trainer: Callable[[], Any], state, started: float, fingerprint: str, entries: dict) -> dict:
    import datasets  # noqa: F401  (loaded before the progress view opens, so that the view silences its bars too)
    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = config.output / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        progress.note(log, "%s: resuming from %s", config.stage, last)
    else:
        progress.note(log, "%s: started -> %s", config.stage, config.output)
    # One process shows the view and logs the steps: the main one of an `accelerate launch`.
    view = progress.StageView(config.stage, None, unit="steps", enabled=config.progress and state.is_main_process)
    with view:
        trainer = build_trainer()
        trainer.remove_callback(PrinterCallback)  # it prints each log entry as a dict; ProgressCallback writes a line
        trainer.add_callback(ProgressCallback(view))
        result = trainer.train(resume_from_checkpoint=last)
        save_model(trainer, config)
    if not state.is_main_process:
        return {}
    manifest = finish_training(
        config,
        trainer,
        result,
        started,
        {
            "input": str(config.input) if hasattr(config, "input") else None,
            "input_fingerprint": fingerprint,
            "rows_in": len(trainer.train_dataset),
            "tokens_in": trained_tokens(trainer),
            **entries,
        },
    )
    progress.note(
        log,
        "%s: finished: %d rows, %d steps, train loss %.4g, %.1fs",
        config.stage,
        manifest["rows_in"],
        manifest["steps"],
        manifest["train_loss"],
        manifest["wall_seconds"],
    )
    return manifest


def trained_tokens(trainer) -> int:
    """Tokens the trainer read (every token-id column of its dataset, times the epochs it ran), for the manifest and
    `scalequest estimate`; summed in Arrow batches so that a million-row dataset is not turned into Python lists."""
    import pyarrow.compute as pc

    dataset = trainer.train_dataset
    columns = [name for name in getattr(dataset, "column_names", None) or [] if name.endswith("_ids")]
    if not columns:
        return 0
    per_epoch = 0
    for batch in dataset.with_format("arrow").iter(batch_size=10_000):
        per_epoch += sum(pc.sum(pc.list_value_length(batch[name])).as_py() or 0 for name in columns)
    return round(per_epoch * (trainer.state.epoch or 0))


def ProgressCallback(view: progress.StageView):
    """A transformers TrainerCallback that moves `view` with the trainer's steps and turns each log entry (loss,
    learning rate, ...) into one line on the console and in log.txt."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            view.start_steps(state.global_step, state.max_steps or None)

        def on_step_end(self, args, state, control, **kwargs):
            view.step(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                view.logged(logs, log)

    return Callback()


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


# ----------------------------------------------------------------------------------------------
# The Hub: the finished model folder and its card
# ----------------------------------------------------------------------------------------------

MODEL_CARD_TEMPLATE = "cards/model_card.md"  # package data: a Jinja template for huggingface_hub.ModelCard
# What the model folder holds that does not go to the Hub: the checkpoints (kept with keep_checkpoints) and hidden
# files (the .lock, temporary files of atomic writes), and the stage's log.txt (local paths and times).
PUSH_IGNORE = ["checkpoints/*", ".*", "*/.*", progress.LOG]
# How each stage's model is loaded, and its Hub pipeline tag.
MODEL_KINDS = {
    "difficulty-train": ("AutoModelForSequenceClassification", "text-classification"),
    "reward-train": ("AutoModelForSequenceClassification", "text-classification"),
}
CAUSAL_LM = ("AutoModelForCausalLM", "text-generation")
STAGE_PURPOSE = {
    "qft": "a question generator: fine-tuned on questions alone (question fine-tuning), it writes a new math "
    "question when given only the opening of a user turn",
    "qpo": "a question generator tuned by question preference optimization (DPO toward solvable, harder rewrites "
    "of its questions)",
    "difficulty-train": "a difficulty scorer: a regression head predicting how often a solver fails a question",
    "reward-train": "a reward model: a scalar head scoring a response to a math question",
    "sft": "a math problem solver fine-tuned on question/response pairs",
}


def training_data(config: TrainingOptions) -> tuple[list[str], list[str]]:
    """What the stage trained on (QFT's `sources`, every other stage's `input`) as the card names it, without
    local paths, and the Hub datasets among them (an earlier stage's output that it pushed counts too)."""
    sources = getattr(config, "sources", None) or [getattr(config, "input", None)]
    names, hub_ids = [], set()
    for source in (s for s in sources if s is not None):
        if source.hub is not None:
            names.append(f"`{source}` (Hub)")
            hub_ids.add(source.hub)
        elif source.bundled is not None:
            names.append(f"`{source.bundled}`, bundled with scalequest")
        else:
            manifest = io.read_manifest(source.path) if source.path.is_dir() else None
            pushed = ((manifest or {}).get("config") or {}).get("push_to_hub")
            if pushed:
                hub_ids.add(pushed)
            stage = f"the output of `{manifest['stage']}`" if manifest and manifest.get("stage") else "local data"
            names.append(f"`{source.path.name}`, {stage}" + (f", on the Hub as `{pushed}`" if pushed else ""))
    return names, sorted(hub_ids)


def folder_name(name: str) -> str:
    """A Hub id as it is, a local folder by its name only: the card names no local path."""
    return Path(name).name if name.startswith((".", "/", "~")) or Path(name).expanduser().exists() else name


def model_card(config: TrainingOptions, manifest: dict) -> str:
    """The model card: the Hub's metadata (license of the base model when known, base model, datasets, tags), then
    what the model is, the base model, the data, the training figures from the manifest and how to load it.
    Rendered by huggingface_hub's `ModelCard.from_template` from `scalequest/cards/model_card.md`."""
    from importlib import resources

    from huggingface_hub import ModelCard, ModelCardData

    data, hub_datasets = training_data(config)
    base, revision, on_hub, original = hub.base_model(config.model, config.revision)
    license_id, license_name = hub.license_of(original, "model", revision if original == base else None)
    auto_class, pipeline_tag = MODEL_KINDS.get(config.stage, CAUSAL_LM)
    metadata = ModelCardData(
        license=license_id if license_id != "unknown" else None,
        license_name=license_name,
        base_model=base if on_hub else None,
        datasets=hub_datasets or None,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["scalequest", config.stage, "math"],
    )
    held_out = manifest.get("held_out") or {}
    figures = [
        ("training rows", manifest.get("rows_in")),
        ("optimizer steps", manifest.get("steps")),
        ("epochs", config.epochs if config.max_steps < 0 else None),
        ("learning rate", config.learning_rate),
        ("batch size per device x accumulation", f"{config.batch_size} x {config.gradient_accumulation_steps}"),
        ("LoRA rank", config.lora.r if config.lora is not None else None),
        ("mean training loss", manifest.get("train_loss")),
        (
            "first / last logged loss",
            f"{manifest['first_logged_loss']} / {manifest.get('last_logged_loss')}"
            if manifest.get("first_logged_loss") is not None
            else None,
        ),
        *((f"held-out {key}", value) for key, value in held_out.items() if value is not None),
        ("wall time (s)", manifest.get("wall_seconds")),
        ("devices", ", ".join(manifest.get("devices") or [])),
        ("GPU-hours", manifest.get("gpu_hours")),
        ("finished", manifest.get("finished_at")),
    ]
    template = resources.files("scalequest").joinpath(MODEL_CARD_TEMPLATE).read_text(encoding="utf-8")
    card = ModelCard.from_template(
        metadata,
        template_str=template,
        repo_id=config.push_to_hub,
        stage=config.stage,
        purpose=STAGE_PURPOSE.get(config.stage, f"the model of the {config.stage} stage"),
        base=base if on_hub else folder_name(base),
        base_revision=revision,
        base_on_hub=on_hub,
        original=folder_name(original) if original != base else None,
        base_license=license_id,
        base_license_name=license_name,
        data=data,
        figures=[{"name": name, "value": value} for name, value in figures if value is not None],
        auto_class=auto_class,
    )
    return str(card).rstrip("\n") + "\n"


def push_model(config: TrainingOptions, manifest: dict) -> None:
    """Write the model card (README.md) into the finished model folder, then upload the folder but its
    checkpoints and hidden files to the Hub model repo `push_to_hub`."""
    io.atomic_write_text(config.output / "README.md", model_card(config, manifest))
    hub.push_folder(
        config.push_to_hub,
        config.output,
        repo_type="model",
        private=config.private,
        ignore_patterns=PUSH_IGNORE,
        commit_message=f"Upload ScaleQuest {config.stage} model",
    )
