"""reward-train: an outcome reward model trained from the solver's own verified samples.

difficulty-label with `keep_responses: true` samples `n` solutions per question with a known answer and grades
each one (`sample_correct`), so one solver pass feeds both the difficulty labels and this stage. Every
(correct, incorrect) pair of samples of one question -- up to `max_pairs_per_question`, a seeded choice -- is a
preference pair: [user: question, assistant: correct sample] over [user: question, assistant: incorrect sample].
TRL's RewardTrainer trains a one-output sequence-classification head on them (Bradley-Terry loss,
-log sigmoid(r_chosen - r_rejected)).

The conversations are the ones reward-select scores: the plain question as the user turn (not the solver's
prompt), the stripped response as the assistant turn (as generate-responses stores it), rendered with the
model's chat template and tokenized as reward-select does (`scorers.base.render_ids`). Samples without a final
answer are left out by default (generate-responses drops them, so reward-select never sees one); samples longer
than `max_length` are left out, not cut, since the final answer is at their end.

Questions, not pairs, are split into train and held out by a seeded hash of the id (`eval_fraction`), so no
held-out question's samples are trained on. After training, the saved folder is loaded the way reward-select
loads a reward model and the held-out questions are scored: pairwise accuracy (a correct sample scored above an
incorrect one of the same question) and best-of-n accuracy of the reward model's pick against a random pick (its
expected value: the share correct), a majority vote over the extracted answers and the oracle (any correct).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass

from pydantic import Field

from scalequest import io
from scalequest.config import DataSource, Grading
from scalequest.models import ModelError, load_tokenizer, resolve_model
from scalequest.training import TrainingConfig, default_bf16, peft_config, run_training, trainer_arguments

log = logging.getLogger(__name__)


class RewardTrainConfig(Grading, TrainingConfig):
    """Train an outcome reward model (TRL RewardTrainer, Bradley-Terry) on correct vs incorrect solver samples."""

    stage = "reward-train"
    arguments_class = "trl:RewardConfig"

    input: DataSource = Field(
        ...,
        description="Graded solver samples: a difficulty-label output run with keep_responses=true (rows with "
        "question, responses, and sample_correct or gold + answers to grade them).",
    )
    model: str = Field(
        "embedded",
        description="Base model to put a one-output reward head on: HF id, local directory or 'embedded'; its "
        "tokenizer needs a chat template (reward-select renders each conversation with it).",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (ours; full fine-tuning of a 7B RM).")
    batch_size: int = Field(4, ge=1, description="Preference pairs per device per step (two conversations each).")
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="Steps accumulated per update; effective batch = batch_size x this x devices."
    )
    max_length: int = Field(
        2048,
        ge=8,
        description="Longest conversation in tokens; longer samples are left out (counted), not cut: the final "
        "answer is at their end.",
    )
    question_field: str = Field("question", description="Input field holding the question (the user turn).")
    max_pairs_per_question: int | None = Field(
        8,
        ge=1,
        description="Most (correct, incorrect) pairs per question, a seeded choice among all of them (null: all), so "
        "questions with many samples do not dominate.",
    )
    include_unanswered: bool = Field(
        False,
        description="Also use samples without a final answer as incorrect ones (reward-select never sees such a "
        "response: generate-responses drops them).",
    )
    eval_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of questions held out (a hash of the id, seeded by `seed`) for pairwise and best-of-n "
        "accuracy in the manifest.",
    )


# ----------------------------------------------------------------------------------------------
# Reading graded samples, splitting questions, building pairs
# ----------------------------------------------------------------------------------------------


@dataclass
class GradedQuestion:
    id: str
    question: str
    responses: list[str]  # stripped, as generate-responses stores them
    answers: list[str | None]
    correct: list[bool]
    held_out: bool = False


def is_held_out(question_id: str, fraction: float, seed: int) -> bool:
    """Whether a question is held out: a seeded hash of its id below `fraction` (stable as rows are added)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_graded(config: RewardTrainConfig) -> tuple[list[GradedQuestion], Counter]:
    """Every input question with its samples and their grades; rows without `sample_correct` are graded here
    (their `answers`, or answers extracted from the responses, against `gold`)."""
    from scalequest.math import extract_answer, grade_many

    source, counts = config.input, Counter()
    questions: list[GradedQuestion] = []
    to_grade: list[tuple[int, str]] = []  # (question index, gold)
    for row in io.read_rows(source):
        question = row.get(config.question_field)
        if not isinstance(question, str) or not question.strip():
            raise io.DataError(f"input {source}: row {row['id']} has no text in field {config.question_field!r}")
        responses = row.get("responses")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise io.DataError(
                f"input {source}: row {row['id']} has no 'responses' list of solver samples; run difficulty-label "
                "with keep_responses=true"
            )
        answers = row.get("answers")
        if not isinstance(answers, list) or len(answers) != len(responses):
            answers = [extract_answer(r) for r in responses]
        answers = [a if isinstance(a, str) and a.strip() else None for a in answers]
        correct = row.get("sample_correct")
        if not (
            isinstance(correct, list) and len(correct) == len(responses) and all(isinstance(c, bool) for c in correct)
        ):
            gold = row.get("gold")
            if not isinstance(gold, str) or not gold.strip():
                raise io.DataError(
                    f"input {source}: row {row['id']} has neither 'sample_correct' nor a 'gold' answer to grade its "
                    "samples against"
                )
            to_grade.append((len(questions), gold))
            correct = []
        questions.append(
            GradedQuestion(
                id=str(row["id"]),
                question=question,
                responses=[r.strip() for r in responses],
                answers=answers,
                correct=list(correct),
                held_out=is_held_out(str(row["id"]), config.eval_fraction, config.seed),
            )
        )
    if not questions:
        raise io.DataError(f"input {source} holds no rows to train on")
    if to_grade:
        pairs = [(answer, gold) for index, gold in to_grade for answer in questions[index].answers]
        grades = iter(grade_many(pairs, workers=config.grading_workers, timeout=config.grading_timeout))
        for index, _ in to_grade:
            graded = [next(grades) for _ in questions[index].answers]
            questions[index].correct = [g.correct for g in graded]
            counts["grading_timeouts"] += sum(g.timed_out for g in graded)
        counts["regraded_rows"] = len(to_grade)
    return questions, counts


def usable_samples(question: GradedQuestion, include_unanswered: bool = False) -> list[int]:
    """Indices of the samples that can be a pair's side: a non-empty response, with a final answer unless
    `include_unanswered` (reward-select only ever scores answered responses)."""
    return [
        i
        for i, response in enumerate(question.responses)
        if response and (include_unanswered or question.answers[i] is not None)
    ]


def question_pairs(question: GradedQuestion, samples: list[int], cap: int | None, seed: int) -> list[tuple[int, int]]:
    """(correct, incorrect) sample indices of one question: every combination, or a seeded choice of `cap`."""
    right = [i for i in samples if question.correct[i]]
    wrong = [i for i in samples if not question.correct[i]]
    pairs = [(c, w) for c in right for w in wrong]
    if cap is not None and len(pairs) > cap:
        pairs = sorted(random.Random(f"{seed}:{question.id}").sample(pairs, cap))
    return pairs


def chat(question: GradedQuestion, index: int) -> list[dict[str, str]]:
    """A sample as reward-select scores it: [user: the question, assistant: the response]."""
    from scalequest.scorers import conversation

    return conversation(question.question, question.responses[index])


def no_pairs_error(config: RewardTrainConfig, questions: list[GradedQuestion]) -> io.DataError:
    """The input has no question with both a correct and an incorrect usable sample: say what it has instead."""
    kinds = Counter()
    unanswered = 0
    for question in questions:
        samples = usable_samples(question, config.include_unanswered)
        unanswered += sum(1 for i, r in enumerate(question.responses) if r and question.answers[i] is None)
        right = sum(question.correct[i] for i in samples)
        kinds["no usable sample" if not samples else "all correct" if right == len(samples) else "all incorrect"] += 1
    detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    hint = (
        f"; {unanswered} samples without a final answer are left out (include_unanswered=true counts them as incorrect)"
        if unanswered and not config.include_unanswered
        else ""
    )
    return io.DataError(
        f"input {config.input} has no question with both a correct and an incorrect sample to make a preference "
        f"pair ({len(questions)} questions: {detail}{hint})"
    )


def prepare(config: RewardTrainConfig, tokenizer, questions: list[GradedQuestion], counts: Counter):
    """Training pairs as token ids [(chosen_ids, rejected_ids)] and the manifest's counts; one DataError line when
    there is nothing to train on."""
    from scalequest.scorers.base import render_ids

    pairs: list[tuple[list[int], list[int]]] = []
    samples = Counter(total=sum(len(q.responses) for q in questions))
    kinds = Counter()
    for question in questions:
        usable = usable_samples(question, config.include_unanswered)
        samples["correct"] += sum(question.correct)
        samples["empty_left_out"] += sum(1 for r in question.responses if not r)
        samples["unanswered_left_out"] += sum(
            1 for i, r in enumerate(question.responses) if r and question.answers[i] is None and i not in usable
        )
        right = sum(question.correct[i] for i in usable)
        if usable and 0 < right < len(usable):
            kinds["mixed"] += 1
        kinds["held_out" if question.held_out else "train"] += 1
        if question.held_out or not 0 < right < len(usable):
            continue
        ids = {i: render_ids(tokenizer, chat(question, i)) for i in usable}
        fitting = [i for i in usable if len(ids[i]) <= config.max_length]
        samples["too_long_left_out"] += len(usable) - len(fitting)
        chosen = question_pairs(question, fitting, config.max_pairs_per_question, config.seed)
        right = sum(question.correct[i] for i in fitting)
        kinds["train_paired"] += bool(chosen)
        kinds["capped"] += len(chosen) < right * (len(fitting) - right)
        pairs.extend((ids[c], ids[w]) for c, w in chosen)
    if not kinds["mixed"]:
        raise no_pairs_error(config, questions)
    if not pairs:
        raise io.DataError(
            f"input {config.input}: none of its {kinds['mixed']} questions with both a correct and an incorrect "
            f"sample gives a training pair ({kinds['held_out']} of {len(questions)} questions are held out by "
            f"eval_fraction {config.eval_fraction}; {samples['too_long_left_out']} samples are over max_length "
            f"{config.max_length})"
        )
    entries = {
        "questions": {
            "total": len(questions),
            "train": kinds["train"],
            "held_out": kinds["held_out"],
            "with_pairs": kinds["mixed"],  # both a correct and an incorrect usable sample, train and held out
            "train_paired": kinds["train_paired"],
        },
        "samples": dict(samples),
        "pairs": {"train": len(pairs), "questions_capped": kinds["capped"]},
        "regraded_rows": counts.get("regraded_rows", 0),
        "grading_timeouts": counts.get("grading_timeouts", 0),
        "row_units": {"in": "preference pairs"},
    }
    return pairs, entries


# ----------------------------------------------------------------------------------------------
# Held-out evaluation: the saved folder, loaded and scored as reward-select does
# ----------------------------------------------------------------------------------------------


def held_out_metrics(questions: list[GradedQuestion], scores: dict[tuple[int, int], float]) -> dict:
    """Pairwise and best-of-n accuracy over held-out questions' answered samples; `scores` maps (question index,
    sample index) -> reward. The reward model's pick breaks ties as reward-select does (lowest sample index)."""
    from scalequest.stages.evaluate import majority_answer
    from scalequest.stages.reward_select import best_response

    pairs = right_order = ties = 0
    picked: Counter = Counter()
    candidates = 0
    for qi, question in enumerate(questions):
        samples = usable_samples(question)
        if not samples:
            continue
        rewards = [scores[(qi, i)] for i in samples]
        grades = [question.correct[i] for i in samples]
        for a, ra in zip(grades, rewards):
            for b, rb in zip(grades, rewards):
                if a and not b:
                    pairs += 1
                    right_order += ra > rb
                    ties += ra == rb
        best = best_response([{"sample_index": i} for i in samples], rewards)
        majority = majority_answer([question.answers[i] for i in samples])
        majority_correct = next(g for i, g in zip(samples, grades) if " ".join(question.answers[i].split()) == majority)
        picked["questions"] += 1
        picked["reward_model"] += grades[best]
        picked["random"] += sum(grades) / len(grades)
        picked["majority_vote"] += majority_correct
        picked["oracle"] += any(grades)
        candidates += len(samples)
    n = picked["questions"]

    def share(key: str) -> float | None:
        return round(picked[key] / n, 6) if n else None

    return {
        "questions": n,
        "mean_candidates": round(candidates / n, 3) if n else None,
        "pairs": pairs,
        "pairwise_accuracy": round(right_order / pairs, 6) if pairs else None,
        "pairwise_ties": ties,
        "best_of_n": {key: share(key) for key in ("reward_model", "random", "majority_vote", "oracle")},
    }


def evaluate_held_out(config: RewardTrainConfig, questions: list[GradedQuestion]) -> dict:
    """Load the trained folder as reward-select would (its score-head check included) and score the held-out
    questions' answered samples."""
    held_out = [q for q in questions if q.held_out]
    chats, keys = [], []
    for qi, question in enumerate(held_out):
        for i in usable_samples(question):
            chats.append(chat(question, i))
            keys.append((qi, i))
    if not chats:
        return held_out_metrics(held_out, {})
    from scalequest.scorers import load_scorer
    from scalequest.stages.reward_select import RewardModelConfig

    scorer = load_scorer(RewardModelConfig(model=str(config.output), trust_remote_code=config.trust_remote_code))
    try:
        scores = dict(zip(keys, scorer.score(chats)))
    finally:
        scorer.close()
    return held_out_metrics(held_out, scores)


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------


def run(config: RewardTrainConfig, force: bool = False) -> dict:
    """Run reward-train; the manifest gains `held_out`: pairwise and best-of-n accuracy on held-out questions."""
    loaded: dict = {}

    def check() -> None:
        """Everything that can fail on bad input, before the output folder is touched."""
        from scalequest.stages.difficulty_train import prepare_tokenizer

        loaded["source"] = resolve_model(config.model, config.revision)
        tokenizer = load_tokenizer(loaded["source"], config.trust_remote_code)
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"the tokenizer of model {config.model!r} has no chat template; reward-select renders every "
                "(question, response) with the reward model's template, so train from a model that has one"
            )
        prepare_tokenizer(tokenizer)  # a pad token (EOS when it has none) and right padding, as scoring uses
        loaded["tokenizer"] = tokenizer
        loaded["questions"], counts = read_graded(config)
        loaded["pairs"], loaded["entries"] = prepare(config, tokenizer, loaded["questions"], counts)
        log.info(
            "%s: %d pairs from %d questions (%d held out)",
            config.stage,
            len(loaded["pairs"]),
            len(loaded["questions"]),
            loaded["entries"]["questions"]["held_out"],
        )

    def build_trainer():
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        args = trainer_arguments(
            config,
            RewardConfig,
            max_length=config.max_length,
            # float32 master weights unless training in bf16 (bf16 weights train slower on CPUs).
            model_init_kwargs={
                "trust_remote_code": config.trust_remote_code,
                "dtype": "bfloat16" if default_bf16(config) else "float32",
            },
        )
        pairs = loaded["pairs"]
        dataset = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
        return RewardTrainer(
            model=loaded["source"],  # AutoModelForSequenceClassification, num_labels=1
            args=args,
            train_dataset=dataset,  # already tokenized as reward-select renders conversations
            processing_class=loaded["tokenizer"],
            peft_config=peft_config(config, task_type="SEQ_CLS"),
        )

    # run_training calls check() before it reads `entries`, so the counts check() puts in it reach the manifest.
    entries: dict = {}

    def check_and_count() -> None:
        check()
        entries.update(loaded["entries"])

    def add_held_out(manifest: dict) -> dict:
        if "held_out" not in manifest:
            # run_training writes its own manifest; the held-out scores come from the saved folder, added here
            # (again on a rerun, should a kill have come between the two writes).
            manifest["held_out"] = evaluate_held_out(config, loaded["questions"])
            io.atomic_write_text(config.output / io.MANIFEST, json.dumps(manifest, indent=2, default=str))
            log.info("%s: held out %s", config.stage, manifest["held_out"])
        return manifest

    return run_training(
        config, build_trainer, force=force, check=check_and_count, entries=entries, complete=add_held_out
    )
