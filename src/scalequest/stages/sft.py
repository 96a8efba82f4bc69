"""Supervised fine-tuning on question/response pairs with TRL's SFTTrainer (loss on the response only).

Paper defaults: 3 epochs, warmup 3% then cosine to 0, peak lr 1e-5 (5e-5 for Llama3 and DeepSeekMath
bases). Chat models train on [user: question] -> [assistant: response] through their chat template; base
models without a template train on a plain "Question: ... Answer:" prompt.
"""

from __future__ import annotations

from pydantic import Field

from scalequest.models import load_tokenizer, resolve_model
from scalequest.config import DomainChoice
from scalequest.training import (
    TrainingConfig,
    default_bf16,
    peft_config,
    read_examples,
    run_training,
    trainer_arguments,
)


class SFTStageConfig(DomainChoice, TrainingConfig):
    """Fine-tune a model on a question/response dataset (TRL SFTTrainer, loss on the response only)."""

    stage = "sft"
    arguments_class = "trl:SFTConfig"

    epochs: float = Field(3.0, gt=0, description="Passes over the data (paper: 3).")
    learning_rate: float = Field(
        1e-5, gt=0, description="Peak learning rate (paper: 1e-5; 5e-5 for Llama3 and DeepSeekMath bases)."
    )
    question_field: str = Field("query", description="Input field holding the question.")
    response_field: str = Field("response", description="Input field holding the response to learn.")
    packing: bool = Field(False, description="Pack several examples into each max_length sequence.")


def build_dataset(config: SFTStageConfig, tokenizer):
    from datasets import Dataset

    from scalequest.templates import plain_solve_prompt

    rows = read_examples(config.input, (config.question_field, config.response_field))
    chat = bool(getattr(tokenizer, "chat_template", None))
    examples = []
    for row in rows:
        question, response = row[config.question_field], row[config.response_field]
        if chat:
            examples.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "completion": [{"role": "assistant", "content": response}],
                }
            )
        else:
            examples.append(
                {"prompt": plain_solve_prompt(question, config.domain), "completion": " " + response.strip()}
            )
    return Dataset.from_list(examples)


def run(config: SFTStageConfig, force: bool = False) -> dict:
    def build_trainer():
        from trl import SFTConfig, SFTTrainer

        source = resolve_model(config.model, config.revision)
        args_bf16 = default_bf16(config)
        tokenizer = load_tokenizer(source, config.trust_remote_code)
        args = trainer_arguments(
            config,
            SFTConfig,
            max_length=config.max_length,
            packing=config.packing,
            completion_only_loss=True,
            # float32 master weights unless training in bf16 (bf16 weights train slower on CPUs).
            model_init_kwargs={
                "trust_remote_code": config.trust_remote_code,
                "dtype": "bfloat16" if args_bf16 else "float32",
            },
        )
        return SFTTrainer(
            model=source,
            args=args,
            train_dataset=build_dataset(config, tokenizer),
            processing_class=tokenizer,
            peft_config=peft_config(config),
        )

    return run_training(config, build_trainer, force=force, check=lambda: resolve_model(config.model, config.revision))
