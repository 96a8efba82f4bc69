"""Question fine-tuning (QFT, paper §2.2): teach a chat model to write a question from the bare pre-query prefix.

Training text = pre-query prefix + question + the template's end-of-turn, i.e. exactly what the chat
template renders for a one-message conversation. The loss covers the question and the end-of-turn only, so
the model learns to write questions (and to stop) without being taught the prefix. The paper trained on
~15K questions without solutions (GSM8K train + MATH train) for 1 epoch, lr 2e-5 (code: cosine, warmup 3%,
max length 256).

Tokenization is ours, not TRL's: TRL tokenizes text prompts with add_special_tokens=True (a template that
writes BOS as text, like Llama-3 or DeepSeek, would get BOS twice) and appends the tokenizer's EOS to every
completion (wrong when EOS is not the end-of-turn, e.g. DeepSeek ends a user turn with 'Assistant:'). So we
hand SFTTrainer token ids with a completion mask; TRL builds the labels (-100 on the prefix) and trains.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter

from typing import TYPE_CHECKING

from pydantic import Field

from scalequest import io
from scalequest.config import DataSource
from scalequest.models import load_tokenizer, resolve_model
from scalequest.training import (
    TrainingOptions,
    default_bf16,
    peft_config,
    run_training,
    trainer_arguments,
)

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


# The paper's QFT data: GSM8K train and MATH train questions, no solutions (~15K).
PAPER_SOURCES = [
    DataSource(hub="openai/gsm8k", config="main", split="train"),
    DataSource(hub="DigitalLearningGmbH/MATH-lighteval", split="train", fields={"question": "problem"}),
]


class QFTConfig(TrainingOptions):
    """Question fine-tuning: train a chat model to write a question from only the pre-query prefix (TRL SFTTrainer)."""

    stage = "qft"
    arguments_class = "trl:SFTConfig"

    sources: list[DataSource] = Field(
        default_factory=lambda: [s.model_copy() for s in PAPER_SOURCES],
        min_length=1,
        description="Data sources whose `question` field is read (rename with fields: {question: problem}); "
        "default: GSM8K train + MATH train from the Hub (the paper's ~15K).",
    )
    max_questions: int | None = Field(
        None, ge=1, description="Train on the first N questions after shuffling with `seed` (default: all)."
    )
    system_prompt: str | None = Field(
        None, description="System turn in the prefix; must match what question generation will use (default: none)."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the questions (paper: 1).")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (paper: 2e-5).")
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Share of steps spent warming up linearly (paper code: 3%)."
    )
    batch_size: int = Field(8, ge=1, description="Questions per device per step.")
    max_length: int = Field(
        256,
        ge=8,
        description="Longest training text in tokens (paper code: 256); longer questions are skipped, not cut, so "
        "every example ends with its end-of-turn.",
    )


def read_source(source: DataSource, skipped: Counter) -> list[str]:
    """The questions of one source; a row without a text `question` is an error naming the source and row."""
    questions = []
    for row in io.read_rows(source):
        value = row.get("question")
        if not isinstance(value, str):
            raise io.DataError(
                f"question source {source}: row {row['id']} has no text field 'question' (fields: {', '.join(row)}; "
                "rename one with fields: {question: NAME})"
            )
        questions.append(value)
    kept = [q.strip() for q in questions if q.strip()]
    if len(kept) < len(questions):
        skipped["empty"] += len(questions) - len(kept)
    return kept


def collect_questions(config: QFTConfig) -> tuple[list[str], dict]:
    """All sources' questions, shuffled with the seed and cut to `max_questions`; plus a summary for the manifest."""
    skipped: Counter = Counter()
    per_source = {}
    questions: list[str] = []
    for source in config.sources:
        found = read_source(source, skipped)
        per_source[str(source)] = len(found)
        questions += found
    if not questions:
        raise io.DataError(f"the question sources ({', '.join(per_source)}) hold no questions")
    random.Random(config.seed).shuffle(questions)
    if config.max_questions is not None:
        if config.max_questions > len(questions):
            log.warning(
                "qft: asked for %d questions but the sources hold %d; training on all of them",
                config.max_questions,
                len(questions),
            )
        questions = questions[: config.max_questions]
    return questions, {"questions_per_source": per_source, "skipped": dict(skipped)}


def split_tokens(tokenizer, prompt: str, completions: list[str]) -> tuple[list[int], list[list[int]]]:
    """Token ids of `prompt` exactly as generation encodes it, and of each completion that follows it.

    A completion is the tail of prompt + completion tokenized as one text (what the chat template's
    rendering tokenizes to), with no special tokens added (the template text already has them). When a
    token merges across the boundary (a prefix ending in a space, 'User: ', meets 'Tom' as ' Tom'), the
    completion is tokenized on its own instead: the model must learn to continue the prompt tokens it
    will actually be given at generation time.
    """
    from scalequest.templates import encode_prompt_text

    prompt_ids = encode_prompt_text(tokenizer, prompt)
    tails = []
    for completion in completions:
        full = encode_prompt_text(tokenizer, prompt + completion)
        if full[: len(prompt_ids)] == prompt_ids:
            tails.append(full[len(prompt_ids) :])
        else:
            tails.append(encode_prompt_text(tokenizer, completion))
    return prompt_ids, tails


def build_dataset(
    questions: list[str], tokenizer, prefix: str, end: str, max_length: int
) -> tuple["datasets.Dataset", int]:
    """Token ids of prefix + question + end-of-turn with a mask that is 1 on the question and end-of-turn only.

    Returns the dataset and how many questions were skipped for not fitting in `max_length`.
    """
    from datasets import Dataset

    examples = []
    too_long = 0
    for question in questions:
        prompt_ids, (completion_ids,) = split_tokens(tokenizer, prefix, [question + end])
        if len(prompt_ids) + len(completion_ids) > max_length:
            too_long += 1
            continue
        examples.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids),
            }
        )
    return Dataset.from_list(examples), too_long


def questions_fingerprint(questions: list[str]) -> str:
    """Changes whenever the training questions (or their order) change, whatever source they came from."""
    digest = hashlib.sha256()
    for question in questions:
        digest.update(question.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def run(config: QFTConfig, force: bool = False) -> dict:
    """Train (resuming from the last checkpoint), save a plain model directory, write the manifest last.

    QFT reads `sources` instead of one `input`: its fingerprint is that of the questions it collected.
    """
    from trl import SFTConfig, SFTTrainer

    from scalequest.templates import end_of_turn, pre_query_prefix

    source = resolve_model(config.model, config.revision)
    # Every check (sources, fields, the template) happens before the output folder is touched.
    questions, summary = collect_questions(config)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    try:
        prefix, end = pre_query_prefix(tokenizer, config.system_prompt), end_of_turn(tokenizer)
    except ValueError as err:
        raise io.DataError(f"model {config.model}: {err}") from None
    dataset, too_long = build_dataset(questions, tokenizer, prefix, end, config.max_length)
    if too_long:
        log.warning(
            "qft: skipped %d of %d questions longer than max_length=%d tokens",
            too_long,
            len(questions),
            config.max_length,
        )
    if len(dataset) == 0:
        raise io.DataError(
            f"no question fits in max_length={config.max_length} tokens together with the prefix; raise max_length"
        )

    bf16 = default_bf16(config)
    args = trainer_arguments(
        config,
        SFTConfig,
        max_length=config.max_length,
        completion_only_loss=True,
        # float32 master weights unless training in bf16 (bf16 weights train slower on CPUs).
        model_init_kwargs={"trust_remote_code": config.trust_remote_code, "dtype": "bfloat16" if bf16 else "float32"},
    )

    def build_trainer():
        return SFTTrainer(
            model=source, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(config)
        )

    return run_training(
        config,
        build_trainer,
        force=force,
        fingerprint=questions_fingerprint(questions),
        entries={
            "input": [str(s) for s in config.sources],
            "rows_in": len(questions),
            "rows_out": len(dataset),
            "dropped": {**summary["skipped"], **({"too_long": too_long} if too_long else {})},
            "questions_per_source": summary["questions_per_source"],
            "pre_query_prefix": prefix,
            "end_of_turn": end,
        },
    )
