"""Difficulty (paper §2.3): label questions by how often a solver fails, train a scorer, drop easy questions.

Three stages, in the order they run:

1. `difficulty-label`: for questions with known answers (GSM8K / MATH train), a solver samples `n`
   solutions (paper: DeepSeekMath-7B-RL); `fail_rate` = share graded wrong (no final answer = wrong).
2. `difficulty-train`: a regressor (a causal LM base with a 1-output head, MSE loss; paper:
   DeepSeekMath-7B-Base) learns question -> fail_rate with the transformers Trainer. A seeded held-out
   split gives MSE and Spearman correlation in the manifest.
3. `filter-difficulty`: scores every synthetic question (`difficulty`, a predicted fail rate) and drops
   easy ones by a rule per generator: a score threshold, a bottom fraction, or target shares of the
   five buckets very easy / easy / medium / hard / very hard ([0, 0.2), [0.2, 0.4), ..., [0.8, 1]).
   The paper dropped 9.2% of all questions this way, from one generator's questions only.

How filter-difficulty runs. A bottom fraction or bucket shares are decisions over ALL rows of a
generator, while shards run independently (and, with the Ray executor, on other machines). So the
stage works in two passes:
  - scoring is its own row-wise stage, `score-difficulty` (`ScoreDifficulty`): a function over a shard
    of rows, mapped over shards by the executor, resumable per shard. It writes full rows plus
    `difficulty` into OUTPUT/scores (or `scores_dir`), a normal stage output with its own manifest;
  - `prepare()` of filter-difficulty runs that scoring stage (finished shards are skipped), then reads
    only (id, generator, difficulty) of every scored row and decides which ids stay: a pure function
    of the scores and the rules (ties broken by input order, sampling seeded), so a resumed run
    decides exactly the same;
  - the filter pass maps scored shard i to output shard i, keeping the chosen rows.
With `scores_dir` outside OUTPUT, trying another rule (--force) reuses the scores instead of redoing
them; scoring a million questions with a 7B model is the expensive part, the decision is not.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from scalequest import io, runner
from scalequest.config import ConfigError, DataSource, EngineConfig, HFEngineConfig, RowStageConfig, Section, sampling_config
from scalequest.engines import load_engine
from scalequest.models import ModelError, resolve_model
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.scorers.sequence_classification import (
    architectures, head_outputs, load_classifier, read_model_config, score_texts, use_padding,
)
from scalequest.templates import solve_prompt, solve_stops, uses_chat_template
from scalequest.training import TrainingConfig, default_bf16, peft_config, run_training, trainer_arguments

log = logging.getLogger(__name__)

BUCKETS = ("very_easy", "easy", "medium", "hard", "very_hard")
Bucket = Literal["very_easy", "easy", "medium", "hard", "very_hard"]


def bucket_of(score: float) -> str:
    """Quintile of [0, 1] a score falls in; scores outside [0, 1] count in the end buckets."""
    return BUCKETS[min(len(BUCKETS) - 1, max(0, math.floor(score * len(BUCKETS))))]


def histogram(scores: list[float]) -> dict[str, int]:
    counts = Counter(bucket_of(s) for s in scores)
    return {name: counts.get(name, 0) for name in BUCKETS}


# ==================================================================================================
# 1. difficulty-label: fail rates of a solver on questions with known answers
# ==================================================================================================

LabelSampling = sampling_config("LabelSampling", temperature=0.7, top_p=0.95, max_new_tokens=2048, n=8)


def _gold_gsm8k(value: Any) -> str | None:
    from scalequest.math import BENCHMARKS

    return BENCHMARKS["gsm8k"].gold({"answer": value})  # "... #### 1,234" -> "1234"


def _gold_boxed(value: Any) -> str | None:
    from scalequest.math import last_boxed

    return last_boxed(value) if isinstance(value, str) else None  # MATH solutions box their answer


def _gold_plain(value: Any) -> str | None:
    from scalequest.math import BENCHMARKS

    return BENCHMARKS["math500"].gold({"answer": value})  # the field is the answer itself (27.0 -> "27")


GOLD_FORMATS = {
    "gsm8k": (_gold_gsm8k, "a solution ending in '#### N'"),
    "boxed": (_gold_boxed, "a solution with the answer in \\boxed{}"),
    "plain": (_gold_plain, "the answer itself"),
}


class DifficultyLabelConfig(RowStageConfig):
    """Label questions with known answers by a solver's fail rate over n sampled solutions."""

    stage = "difficulty-label"

    input: DataSource = Field(
        ..., description="Questions with known answers: a path, {bundled: gsm8k_train}, or {hub: openai/gsm8k, config: main}."
    )
    question_field: str = Field("question", description="Field holding the question (MATH: problem).")
    answer_field: str = Field("answer", description="Field holding the known answer or solution (MATH: solution).")
    gold_format: Literal["gsm8k", "boxed", "plain"] = Field(
        "gsm8k", description="How answer_field holds the gold: gsm8k = solution ending in '#### N'; boxed = solution with \\boxed{} (MATH); plain = the answer itself."
    )
    limit: int | None = Field(None, ge=1, description="Label only the first N questions.")
    engine: EngineConfig = Field(default_factory=HFEngineConfig, description="The solver (paper: DeepSeekMath-7B-RL).")
    sampling: LabelSampling = Field(
        default_factory=LabelSampling, description="Solver sampling; sampling.n = solutions per question (default 8, temperature 0.7)."
    )
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto", description="chat = through the chat template; plain = 'Question: ... Answer:' for base models; auto = chat when the tokenizer has a template."
    )
    grading_timeout: float = Field(5.0, gt=0, description="Seconds allowed per answer check; a check that runs over counts as wrong.")
    grading_workers: int | None = Field(None, ge=1, description="Grading processes; default: one per CPU core.")
    keep_responses: bool = Field(False, description="Store the solver's full responses in each row (large).")
    shard_size: int = Field(256, ge=1, description="Questions per output shard; a shard is the unit of resume.")


class LabelDifficulty(RowStage):
    config: DifficultyLabelConfig

    def check(self) -> None:
        self.config.engine.model_path()

    # Questions are read once, cut to `limit` and checked for a gold answer before any shard runs.
    def labelled_rows(self) -> list[dict]:
        """Rows {id, question, gold}; a row without a question or a readable gold answer is an error."""
        if hasattr(self, "_rows"):
            return self._rows
        config = self.config
        read_gold, expected = GOLD_FORMATS[config.gold_format]
        rows = []
        for row in io.read_rows(config.input):
            if config.limit is not None and len(rows) >= config.limit:
                break
            question = row.get(config.question_field)
            if not isinstance(question, str) or not question.strip():
                raise io.DataError(f"input {config.input}: row {row['id']} has no question in field {config.question_field!r}")
            if row.get(config.answer_field) is None:
                raise io.DataError(
                    f"input {config.input}: row {row['id']} has no field {config.answer_field!r} with its known answer "
                    "(set answer_field to the field holding the gold answer)"
                )
            gold = read_gold(row[config.answer_field])
            if not gold:
                raise io.DataError(
                    f"input {config.input}: row {row['id']}: field {config.answer_field!r} is not {expected} "
                    f"(gold_format {config.gold_format}); set gold_format or answer_field"
                )
            rows.append({"id": row["id"], "question": question, "gold": gold})
        self._rows = rows
        return rows

    def count_input_rows(self) -> int:
        return len(self.labelled_rows())

    def input_shards(self) -> Iterator[Shard]:
        rows, size = self.labelled_rows(), self.config.shard_size
        for index, start in enumerate(range(0, len(rows), size)):
            yield Shard(index, rows[start : start + size])

    def setup(self) -> None:
        self.engine = load_engine(self.config.engine)
        self.chat = uses_chat_template(self.engine, self.config.engine, self.config.prompt_format)

    def prompt(self, question: str):
        return solve_prompt(question, self.chat)

    def process(self, shard: Shard) -> ShardResult:
        from scalequest.math import extract_answer, grade_many

        config, sampling = self.config, self.config.sampling
        params = sampling.params(sampling.seed + shard.index, stop=(*sampling.stop, *solve_stops(self.chat)))
        outputs = self.engine.generate([self.prompt(row["question"]) for row in shard.rows], params)
        result = ShardResult(rows=[])
        answered = []
        for row, completions in zip(shard.rows, outputs):
            if not completions:
                result.dropped["engine_failure"] += 1
                continue
            result.tokens_in += completions[0].prompt_tokens
            result.tokens_out += sum(c.completion_tokens for c in completions)
            answered.append((row, completions, [extract_answer(c.text) for c in completions]))
        # One grading call for the whole shard keeps every grading process busy.
        pairs = [(answer, row["gold"]) for row, _, answers in answered for answer in answers]
        grades = iter(grade_many(pairs, workers=config.grading_workers, timeout=config.grading_timeout))
        for row, completions, answers in answered:
            graded = [next(grades) for _ in answers]
            correct = sum(g.correct for g in graded)
            result.counts["samples"] += len(answers)
            result.counts["no_answer"] += sum(a is None for a in answers)
            result.counts["grading_timeouts"] += sum(g.timed_out for g in graded)
            result.rows.append(
                {
                    **row,
                    "fail_rate": 1 - correct / len(answers),
                    "samples": len(answers),
                    "correct": correct,
                    "answers": answers,
                    **({"responses": [c.text for c in completions]} if config.keep_responses else {}),
                    "solver": config.engine.model,
                }
            )
        return result

    def teardown(self) -> None:
        self.engine.close()

    def finalize(self) -> dict:
        rates = [row["fail_rate"] for row in io.load_rows(self.config.output)]
        return {
            "input": str(self.config.input),
            "solver": self.config.engine.model,
            "mean_fail_rate": round(sum(rates) / len(rates), 4) if rates else None,
            "fail_rate_histogram": histogram(rates),
        }


# ==================================================================================================
# 2. difficulty-train: a 1-output regression head on a causal LM, trained on (question, fail_rate)
# ==================================================================================================


class DifficultyTrainConfig(TrainingConfig):
    """Train a difficulty regressor (sequence classification, 1 output, MSE) on questions and fail rates."""

    stage = "difficulty-train"

    model: str = Field("embedded", description="Base model to put a regression head on: HF id, local directory or 'embedded' (paper: DeepSeekMath-7B-Base).")
    epochs: float = Field(2.0, gt=0, description="Passes over the training split (ours; the paper gives none).")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (ours; the paper gives none).")
    batch_size: int = Field(8, ge=1, description="Examples per device per step.")
    max_length: int = Field(512, ge=8, description="Longest tokenized question; longer ones are truncated (give filter-difficulty the same max_length).")
    question_field: str = Field("question", description="Input field holding the question.")
    label_field: str = Field("fail_rate", description="Input field holding the number to predict.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of rows held out (seeded by `seed`) for MSE and Spearman in the manifest.")


def read_labelled(config: DifficultyTrainConfig) -> list[dict]:
    """Training rows; a row without question text or a finite numeric label is named by id."""
    rows = []
    for row in io.read_rows(config.input):
        question, label = row.get(config.question_field), row.get(config.label_field)
        if not isinstance(question, str) or not question.strip():
            raise io.DataError(f"input {config.input}: row {row['id']} has no text in field {config.question_field!r}")
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise io.DataError(f"input {config.input}: row {row['id']} has no number in field {config.label_field!r} (got {label!r})")
        rows.append({"question": question, "label": float(label)})
    held_out = held_out_count(len(rows), config.eval_fraction)
    if len(rows) - held_out < 1:
        raise io.DataError(f"input {config.input} holds {len(rows)} rows: too few to train on with eval_fraction {config.eval_fraction}")
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    class RegressionTrainer(Trainer):
        """Scores the held-out split once training ends, so its MSE and Spearman land in the log history."""

        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            if self.eval_dataset is not None and len(self.eval_dataset):
                self.evaluate()
            return result

    source = resolve_model(config.model, config.revision)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    prepare_tokenizer(tokenizer)
    bf16 = default_bf16(config)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=1, problem_type="regression", trust_remote_code=config.trust_remote_code,
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
    args = trainer_arguments(config, TrainingArguments, per_device_eval_batch_size=config.batch_size, eval_strategy="no")
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
            log.warning("%s: every row of %s has %s = %g; the regressor can only learn a constant", config.stage,
                        config.input, config.label_field, labels.pop())

    manifest = run_training(config, lambda: build_regression_trainer(config), force=force, check=check)
    if manifest and "held_out" not in manifest:
        # run_training writes its own manifest; the held-out metrics are in its log history, lifted
        # to the top here (again on a rerun, should a kill have come between the two writes).
        scores = next((e for e in reversed(manifest["log_history"]) if "eval_mse" in e), {})
        rows = held_out_count(sum(1 for _ in io.read_rows(config.input)), config.eval_fraction)
        manifest["held_out"] = {"rows": rows, "mse": scores.get("eval_mse"), "spearman": scores.get("eval_spearman")}
        io.atomic_write_text(config.output / io.MANIFEST, json.dumps(manifest, indent=2, default=str))
    return manifest


# ==================================================================================================
# 3a. score-difficulty: the row-wise scoring pass (an executor maps it over shards)
# ==================================================================================================


def check_regressor(name: str, trust_remote_code: bool = False, revision: str | None = None) -> str:
    """The regressor's location, after checking it is a 1-output sequence-classification model."""
    source, model_config = read_model_config(name, revision, trust_remote_code, what="regressor")
    outputs = head_outputs(model_config)
    if outputs is None:
        raise ModelError(
            f"regressor {name} is not a sequence-classification model (its config.json lists architectures "
            f"{architectures(model_config) or 'none'}); train one with difficulty-train"
        )
    if outputs != 1:
        raise ModelError(f"regressor {name} has {outputs} outputs; a difficulty regressor has 1")
    return source


# Questions per forward pass. Batches are sorted by length, so little of them is padding. On our 2-core
# CPU (SmolLM2-135M as regressor, GSM8K questions) batches of 16 scored 2.2x (bf16) to 2.8x (float32)
# as many questions per second as one at a time, batches of 4 about 1.5x (benchmarks/difficulty_scoring.py).
GPU_BATCH_SIZE = 64
CPU_BATCH_SIZE = 16


class ScoreDifficultyConfig(RowStageConfig):
    """Score each question's difficulty (a predicted fail rate) with a regressor from difficulty-train."""

    stage = "score-difficulty"
    # Batching changes throughput, not the scores worth redoing.
    runtime_fields: ClassVar[set[str]] = RowStageConfig.runtime_fields | {"batch_size"}

    regressor: str = Field(..., description="The difficulty regressor: a difficulty-train output folder (or any 1-output sequence-classification model).")
    regressor_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when the regressor is a Hub id.")
    field: str = Field("question", description="Row field holding the question text.")
    batch_size: int | None = Field(
        None, ge=1, description=f"Questions per forward pass, sorted by length; default {GPU_BATCH_SIZE} on CUDA, {CPU_BATCH_SIZE} on CPU."
    )
    max_length: int = Field(512, ge=8, description="Longest tokenized question; longer ones are truncated (match difficulty-train).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA and on CPUs with native bf16, else float32."
    )
    device: str = Field("auto", description="Device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = Field(False, description="Allow the model repository to run its own code.")
    shard_size: int = Field(1000, ge=1, description="Questions per output shard; a shard is the unit of resume.")


def score_questions(model, tokenizer, questions: list[str], batch_size: int, max_length: int) -> list[float]:
    """The regressor's score for each question, in order; batches are sorted by length to save padding."""
    # No cap on a batch's padding: questions are short, so full batches pay even on a CPU (the numbers above).
    return score_texts(model, tokenizer, questions, batch_size, max_length, max_padding=None)


class ScoreDifficulty(RowStage):
    config: ScoreDifficultyConfig

    def check(self) -> None:
        check_regressor(self.config.regressor, self.config.trust_remote_code, self.config.regressor_revision)

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def gpus_per_replica(self) -> int:
        return 0 if self.config.device == "cpu" else 1

    def setup(self) -> None:
        from transformers import AutoTokenizer

        config = self.config
        source = check_regressor(config.regressor, config.trust_remote_code, config.regressor_revision)
        self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
        prepare_tokenizer(self.tokenizer)  # pad with EOS when there is no pad token, as difficulty-train does
        self.model = load_classifier(source, config.regressor, what="regressor", device=config.device,
                                     dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        self.batch_size = config.batch_size or (GPU_BATCH_SIZE if self.model.device.type == "cuda" else CPU_BATCH_SIZE)
        if not use_padding(self.model, self.tokenizer):  # neither a pad nor an EOS token to pad with
            self.batch_size = 1

    def process(self, shard: Shard) -> ShardResult:
        field = self.config.field
        result = ShardResult(rows=[])
        rows = []
        for row in shard.rows:
            if isinstance(row[field], str) and row[field].strip():
                rows.append(row)
            else:
                result.dropped["empty"] += 1
        scores = score_questions(self.model, self.tokenizer, [r[field] for r in rows], self.batch_size, self.config.max_length)
        result.rows = [{**row, "difficulty": score} for row, score in zip(rows, scores)]
        return result

    def teardown(self) -> None:
        del self.model

    def finalize(self) -> dict:
        scores = [row["difficulty"] for row in io.load_rows(self.config.output)]
        return {"regressor": self.config.regressor, "histogram": histogram(scores)}


# ==================================================================================================
# 3b. filter-difficulty: score, then decide over all rows of each generator which questions stay
# ==================================================================================================


class DifficultyRule(Section):
    """At most one of threshold, bottom_fraction, target_shares; none of them keeps every question."""

    threshold: float | None = Field(None, description="Drop questions scored below this (scores are predicted fail rates: 0 = always solved).")
    bottom_fraction: float | None = Field(
        None, ge=0, lt=1, description="Drop this share of the easiest questions: floor(share x count), ties by input order."
    )
    target_shares: dict[Bucket, float] | None = Field(
        None,
        description="Share of the kept questions per bucket (very_easy, easy, medium, hard, very_hard; unnamed = 0; sum 1): "
        "keeps as many questions as fit these shares, sampled at random within a bucket.",
    )

    @model_validator(mode="after")
    def one_rule(self) -> "DifficultyRule":
        chosen = [name for name in ("threshold", "bottom_fraction", "target_shares") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set only one of threshold, bottom_fraction, target_shares (got {', '.join(chosen)})")
        if self.target_shares is not None:
            if any(share < 0 for share in self.target_shares.values()):
                raise ValueError("target_shares must not be negative")
            if abs(sum(self.target_shares.values()) - 1) > 1e-6:
                raise ValueError(f"target_shares must sum to 1 (they sum to {sum(self.target_shares.values()):g})")
        return self

    def describe(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True) or {"keep": "all"}


def choose_dropped(scored: list[tuple[str, float]], rule: DifficultyRule, seed: str) -> dict[str, str]:
    """Ids to drop under `rule`, with the reason, for one generator's (id, score) pairs in input order."""
    if rule.threshold is not None:
        return {row_id: "below_threshold" for row_id, score in scored if score < rule.threshold}
    if rule.bottom_fraction is not None:
        count = math.floor(len(scored) * rule.bottom_fraction + 1e-9)  # 0.29 x 100 is 28.999...
        easiest = sorted(range(len(scored)), key=lambda i: (scored[i][1], i))[:count]
        return {scored[i][0]: "easiest_fraction" for i in easiest}
    if rule.target_shares is not None:
        return _drop_to_shares(scored, rule.target_shares, seed)
    return {}


def _drop_to_shares(scored: list[tuple[str, float]], shares: dict[str, float], seed: str) -> dict[str, str]:
    """Keep the most questions whose buckets match `shares`: total = min over buckets of count / share."""
    members: dict[str, list[str]] = {name: [] for name in BUCKETS}
    for row_id, score in scored:
        members[bucket_of(score)].append(row_id)
    wanted = {name: shares.get(name, 0.0) for name in BUCKETS}
    total = min(math.floor(len(members[name]) / share + 1e-9) for name, share in wanted.items() if share > 0)
    # Largest remainders: quotas sum to `total` exactly and never exceed a bucket's count,
    # because share x total <= count for every bucket.
    exact = {name: share * total for name, share in wanted.items()}
    quota = {name: math.floor(value + 1e-9) for name, value in exact.items()}
    by_remainder = sorted(BUCKETS, key=lambda name: (-(exact[name] - quota[name]), BUCKETS.index(name)))
    for name in by_remainder[: total - sum(quota.values())]:
        quota[name] += 1
    rng = random.Random(seed)
    dropped = {}
    for name in BUCKETS:
        kept = set(rng.sample(members[name], quota[name]))
        dropped.update({row_id: "bucket_share" for row_id in members[name] if row_id not in kept})
    return dropped


class FilterDifficultyConfig(ScoreDifficultyConfig):
    """Score questions with the difficulty regressor and drop easy ones by a rule per generator."""

    stage = "filter-difficulty"
    runtime_fields: ClassVar[set[str]] = ScoreDifficultyConfig.runtime_fields | {"scores_dir"}

    default_rule: DifficultyRule = Field(
        default_factory=lambda: DifficultyRule(bottom_fraction=0.1),
        description="Rule for generators not named in generator_rules (ours: drop the easiest 10%; the paper removed 9.2% overall). {} keeps all.",
    )
    generator_rules: dict[str, DifficultyRule] = Field(
        default_factory=dict, description="Generator (the rows' generator field) -> its rule; the paper filtered only one generator's questions."
    )
    generator_field: str = Field("generator", description="Row field naming the model that wrote the question; rows without it use default_rule.")
    seed: int = Field(0, description="Seed of the random sampling within buckets (target_shares).")
    scores_dir: Path | None = Field(
        None, description="Where the scored rows go (a score-difficulty output); default OUTPUT/scores. Outside OUTPUT, a rule change with --force reuses the scores."
    )

    def scoring_config(self) -> ScoreDifficultyConfig:
        values = {name: getattr(self, name) for name in ScoreDifficultyConfig.model_fields}
        return ScoreDifficultyConfig(**{**values, "output": self.scores_dir or self.output / "scores"})


class FilterDifficulty(RowStage):
    config: FilterDifficultyConfig
    force = False

    @classmethod
    def run(cls, config: FilterDifficultyConfig, force: bool = False) -> dict[str, Any]:
        stage = cls(config)
        stage.force = force
        return runner.run_stage(stage, force=force)

    def check(self) -> None:
        check_regressor(self.config.regressor, self.config.trust_remote_code, self.config.regressor_revision)
        if self.config.scores_dir is not None and self.config.scores_dir.resolve() == self.config.output.resolve():
            raise ConfigError("scores_dir must differ from output (default: OUTPUT/scores)")

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def rule_for(self, generator: str) -> DifficultyRule:
        return self.config.generator_rules.get(generator, self.config.default_rule)

    def prepare(self) -> None:
        """Score every row (the executor runs the scoring stage), then decide which rows stay."""
        config = self.config
        scoring = config.scoring_config()
        # --force redoes the scores only when they came from another regressor, input or scoring setup.
        fingerprint = io.input_fingerprint(config.input)
        saved = io.read_manifest(scoring.output) if scoring.output.is_dir() else None
        reusable = saved is not None and saved.get("config_hash") == scoring.config_hash() and saved.get("input_fingerprint") == fingerprint
        self.scoring = ScoreDifficulty.run(scoring, force=self.force and not reusable)
        self.scores_dir = scoring.output
        by_generator: dict[str, list[tuple[str, float]]] = {}
        for row in io.read_rows(scoring.output):
            by_generator.setdefault(str(row.get(config.generator_field) or ""), []).append((row["id"], row["difficulty"]))
        self.dropped: dict[str, str] = {}
        self.summary: dict[str, dict] = {}
        for generator, scored in by_generator.items():
            rule = self.rule_for(generator)
            dropped = choose_dropped(scored, rule, seed=f"{config.seed}-{generator}")
            self.dropped.update(dropped)
            self.summary[generator] = {
                "rule": rule.describe(),
                "before": histogram([s for _, s in scored]),
                "after": histogram([s for row_id, s in scored if row_id not in dropped]),
            }

    def input_shards(self) -> Iterator[Shard]:
        # Scored shard i holds input shard i (with difficulty), so it becomes output shard i.
        for path in sorted(self.scores_dir.glob(io.SHARD_GLOB)):
            yield Shard(int(path.stem.split("-")[1]), list(io.read_file(path)))

    def process(self, shard: Shard) -> ShardResult:
        result = ShardResult(rows=[])
        for row in shard.rows:
            reason = self.dropped.get(row["id"])
            if reason:
                result.dropped[reason] += 1
            else:
                result.rows.append(row)
        return result

    def finalize(self) -> dict:
        before = Counter()
        after = Counter()
        for entry in self.summary.values():
            before.update(entry["before"])
            after.update(entry["after"])
        if not sum(after.values()):
            log.warning("%s: no question left after filtering; the output is empty", self.config.stage)
        # The scoring pass is where the time and GPUs go; count it here, where run summaries look.
        own = [json.loads(path.read_text()) for path in runner.finished_stats(self.config.output)]
        return {
            "wall_seconds": round(sum(s["seconds"] for s in own) + self.scoring.get("wall_seconds", 0.0), 3),
            "devices": sorted({s.get("device", "cpu") for s in own} | set(self.scoring.get("devices", []))),
            "gpu_hours": self.scoring.get("gpu_hours", 0.0),  # the filter pass itself never uses a GPU
            "regressor": self.config.regressor,
            "scores": str(self.scores_dir),
            "scoring_dropped": self.scoring.get("dropped", {}),
            "histogram": {"before": {b: before[b] for b in BUCKETS}, "after": {b: after[b] for b in BUCKETS}},
            "by_generator": self.summary,
        }
