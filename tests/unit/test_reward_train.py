"""reward-train: preference pairs from graded solver samples, split by question, TRL RewardTrainer on a tiny
random Llama, held-out pairwise and best-of-n accuracy in the manifest, and an output reward-select loads.

The input is made the way a pipeline makes it: difficulty-label with keep_responses=true over a canned solver
(its samples and their grades are known), so one solver pass feeds reward-train.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from scalequest import io
from scalequest.engines import Completion, Engine
from scalequest.models import ModelError
from scalequest.runner import run_row_stage
from scalequest.scorers import conversation, load_scorer, score_head_kind
from scalequest.scorers.base import render_ids
from scalequest.stages import difficulty_label
from scalequest.stages.difficulty_label import DifficultyLabelConfig, LabelDifficulty
from scalequest.stages.reward_select import RewardModelConfig, RewardSelect, RewardSelectConfig
from scalequest.stages.reward_train import (
    GradedQuestion,
    RewardTrainConfig,
    held_out_metrics,
    is_held_out,
    prepare,
    question_pairs,
    read_graded,
    run,
    usable_samples,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# 12 questions "What is a + b?"; the solver's 4 samples: right, right, wrong, no answer (every third question
# all right, so some questions give no pair).
QUESTIONS = [{"id": f"g{i}", "question": f"What is {i} + {i + 3}?", "answer": f"#### {2 * i + 3}"} for i in range(12)]


def samples_for(i: int) -> list[str]:
    total = 2 * i + 3
    right = f"{i} + {i + 3} = {total}. The answer is \\boxed{{{total}}}."
    if i % 3 == 2:
        return [right, right, f"So \\boxed{{{total}}}.", right]
    return [right, f"Add them: \\boxed{{{total}}}.", f"I get \\boxed{{{total + 1}}}.", "No idea."]


class CannedSolver(Engine):
    """Answers each question with its canned samples."""

    def generate(self, prompts, params):
        results = []
        for prompt in prompts:
            text = prompt[-1]["content"]
            index = next(i for i, q in enumerate(QUESTIONS) if q["question"] in text)
            results.append([Completion(t, 20, 15) for t in samples_for(index)][: params.n])
        return self._count(results)


@pytest.fixture(scope="module")
def labels(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished difficulty-label output with keep_responses=true."""
    root = tmp_path_factory.mktemp("labels")
    source = write_jsonl(root / "gsm8k.jsonl", QUESTIONS)
    config = DifficultyLabelConfig(
        input=str(source),
        output=root / "labels",
        engine={"model": str(tiny_model_dir)},
        sampling={"n": 4},
        prompt_format="chat",
        keep_responses=True,
        grading_workers=1,
        progress=False,
    )
    engine = CannedSolver()
    patch = pytest.MonkeyPatch()
    patch.setattr(difficulty_label, "load_engine", lambda _: engine)
    try:
        run_row_stage(LabelDifficulty, config)
    finally:
        patch.undo()
    return root / "labels"


def train_config(tmp_path, source, model_dir, **overrides) -> RewardTrainConfig:
    values = dict(
        input=str(source),
        output=tmp_path / "rm",
        model=str(model_dir),
        eval_fraction=0.3,
        batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        epochs=2,
        max_pairs_per_question=3,
        progress=False,
        grading_workers=1,
    )
    values.update(overrides)
    return RewardTrainConfig(**values)


def held_out_ids(fraction=0.3, seed=42) -> set[str]:
    return {q["id"] for q in QUESTIONS if is_held_out(q["id"], fraction, seed)}


# --- pairs and the split ----------------------------------------------------------------------------


def test_pairs_are_every_correct_incorrect_combination_up_to_a_seeded_cap():
    question = GradedQuestion(
        id="q",
        question="What is 2 + 2?",
        responses=["\\boxed{4}", "\\boxed{5}", "The answer is 4.", "", "hmm", "\\boxed{3}"],
        answers=["4", "5", "4", None, None, "3"],
        correct=[True, False, True, False, False, False],
    )
    assert usable_samples(question) == [0, 1, 2, 5]  # no empty response, no sample without a final answer
    assert usable_samples(question, include_unanswered=True) == [0, 1, 2, 4, 5]
    every = question_pairs(question, usable_samples(question), None, seed=0)
    assert every == [(0, 1), (0, 5), (2, 1), (2, 5)]
    capped = question_pairs(question, usable_samples(question), 3, seed=0)
    assert len(capped) == 3 and set(capped) < set(every)
    assert capped == question_pairs(question, usable_samples(question), 3, seed=0)  # seeded: the same choice


def test_the_split_is_by_question_and_pairs_use_reward_selects_layout(labels, tiny_tokenizer):
    config = train_config(Path("/unused"), labels, "unused")
    questions, counts = read_graded(config)
    assert counts["regraded_rows"] == 0  # difficulty-label's sample_correct is used as is
    by_id = {q.id: q for q in questions}
    assert by_id["g0"].correct == [True, True, False, False] and by_id["g0"].answers[3] is None
    held = held_out_ids()
    assert 0 < len(held) < len(QUESTIONS)  # the seeded hash holds some questions out
    assert {q.id for q in questions if q.held_out} == held
    assert is_held_out("g1", 0.3, 42) == is_held_out("g1", 0.3, 42) and not is_held_out("g1", 0.0, 42)

    pairs, entries = prepare(config, tiny_tokenizer, questions, counts)
    # Trained questions with both outcomes: 2 right x 1 wrong answered sample each (the unanswered one is left out).
    paired = [q for q in questions if not q.held_out and int(q.id[1:]) % 3 != 2]
    assert len(pairs) == 2 * len(paired) and entries["pairs"]["train"] == len(pairs)
    expected = set()
    for question in paired:
        wrong = render_ids(tiny_tokenizer, conversation(question.question, question.responses[2]))
        for right in (0, 1):
            expected.add(
                (
                    tuple(render_ids(tiny_tokenizer, conversation(question.question, question.responses[right]))),
                    tuple(wrong),
                )
            )
    assert {(tuple(c), tuple(r)) for c, r in pairs} == expected  # no held-out question's samples are trained on
    text = tiny_tokenizer.decode(pairs[0][0])
    assert text.startswith("<|im_start|>system") and "<|im_start|>user\nWhat is" in text  # the plain question
    assert entries["questions"] == {
        "total": 12,
        "train": 12 - len(held),
        "held_out": len(held),
        "with_pairs": 8,
        "train_paired": len(paired),
    }
    assert entries["samples"]["unanswered_left_out"] == 8 and entries["samples"]["total"] == 48


def test_rows_without_sample_correct_are_graded_against_gold(tmp_path):
    rows = [
        {"id": "a", "question": "What is 1 + 1?", "gold": "2", "responses": ["\\boxed{2}", "It is 3."]},
        {"id": "b", "question": "What is 2 + 2?", "gold": "4", "responses": ["The answer is 4.", "\\boxed{5}"]},
    ]
    config = train_config(tmp_path, write_jsonl(tmp_path / "in.jsonl", rows), "unused")
    questions, counts = read_graded(config)
    assert [q.correct for q in questions] == [[True, False], [True, False]]
    assert [q.answers for q in questions] == [["2", None], ["4", "5"]]
    assert counts["regraded_rows"] == 2


def test_held_out_metrics_compare_the_pick_with_random_and_majority():
    questions = [
        GradedQuestion("a", "q", ["r0", "r1", "r2"], ["1", "2", "2"], [True, False, False]),
        GradedQuestion("b", "q", ["r0", "r1"], ["7", "7"], [True, True]),
    ]
    scores = {(0, 0): 1.0, (0, 1): 0.5, (0, 2): 2.0, (1, 0): 0.0, (1, 1): 0.0}
    metrics = held_out_metrics(questions, scores)
    assert metrics["pairs"] == 2 and metrics["pairwise_accuracy"] == 0.5
    # a: RM picks r2 (wrong), majority "2" (wrong), random 1/3; b: all right.
    assert metrics["best_of_n"] == {
        "reward_model": 0.5,
        "random": round((1 / 3 + 1) / 2, 6),
        "majority_vote": 0.5,
        "oracle": 1.0,
    }
    assert metrics["questions"] == 2 and metrics["mean_candidates"] == 2.5


# --- training, the manifest and reward-select -------------------------------------------------------


def test_training_writes_a_reward_model_that_reward_select_loads(tmp_path, labels, tiny_model_dir):
    config = train_config(tmp_path, labels, tiny_model_dir)
    manifest = run(config)
    assert manifest["stage"] == "reward-train" and manifest["steps"] > 0
    assert manifest["rows_in"] == manifest["pairs"]["train"] > 0
    held = manifest["held_out"]
    assert held["questions"] == len(held_out_ids())
    assert 0 <= held["pairwise_accuracy"] <= 1 and held["pairs"] > 0
    assert set(held["best_of_n"]) == {"reward_model", "random", "majority_vote", "oracle"}
    assert all(0 <= value <= 1 for value in held["best_of_n"].values())
    assert held["best_of_n"]["majority_vote"] == 1.0  # 2 of 3 answered samples are right in every question
    assert json.loads((config.output / "manifest.json").read_text())["held_out"] == held
    assert not (config.output / "checkpoints").exists()

    # reward-select accepts the folder (its trained score head), and still refuses the untrained base.
    reward = RewardModelConfig(model=str(config.output), dtype="float32")
    assert score_head_kind(reward) == "classifier"
    scorer = load_scorer(reward)
    scorer.close()
    with pytest.raises(ModelError, match="has no score head"):
        load_scorer(RewardModelConfig(model=str(tiny_model_dir)))
    responses = [
        {
            "id": f"q0-r{k}",
            "question_id": "q0",
            "question": QUESTIONS[0]["question"],
            "sample_index": k,
            "response": text,
            "answer": "3",
        }
        for k, text in enumerate(samples_for(0)[:3])
    ]
    select = RewardSelectConfig(
        input=str(write_jsonl(tmp_path / "responses.jsonl", responses)),
        output=tmp_path / "selected",
        reward={"model": str(config.output), "dtype": "float32"},
        progress=False,
    )
    assert run_row_stage(RewardSelect, select)["rows_out"] == 1

    # A rerun is skipped; a manifest that lost its held-out scores (a kill between the writes) gets them again.
    assert run(config)["finished_at"] == manifest["finished_at"]
    without = {key: value for key, value in manifest.items() if key != "held_out"}
    (config.output / "manifest.json").write_text(json.dumps(without))
    assert run(config)["held_out"]["pairs"] == held["pairs"]


def test_lora_adapters_are_merged_into_a_loadable_reward_model(tmp_path, labels, tiny_model_dir):
    config = train_config(tmp_path, labels, tiny_model_dir, lora={"r": 4, "alpha": 8}, epochs=1, eval_fraction=0.0)
    manifest = run(config)
    assert manifest["held_out"]["questions"] == 0 and manifest["held_out"]["pairwise_accuracy"] is None
    load_scorer(RewardModelConfig(model=str(config.output), dtype="float32")).close()


# --- bad input -------------------------------------------------------------------------------------


def test_an_input_without_mixed_outcomes_is_one_line_naming_it(tmp_path, tiny_model_dir):
    rows = [
        {"id": "a", "question": "What is 1 + 1?", "responses": ["\\boxed{2}", "2"], "sample_correct": [True, True]},
        {"id": "b", "question": "What is 2 + 2?", "responses": ["\\boxed{5}", "hmm"], "sample_correct": [False, False]},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    config = train_config(tmp_path, source, tiny_model_dir)
    with pytest.raises(io.DataError) as error:
        run(config)
    message = str(error.value)
    assert "\n" not in message and str(source) in message
    assert "no question with both a correct and an incorrect sample" in message
    assert "1 all correct" in message and "1 all incorrect" in message and "include_unanswered" in message
    assert not config.output.exists()

    no_responses = write_jsonl(tmp_path / "plain.jsonl", [{"id": "a", "question": "What is 1 + 1?", "gold": "2"}])
    with pytest.raises(io.DataError, match=r"row a has no 'responses' list .* keep_responses=true"):
        run(train_config(tmp_path, no_responses, tiny_model_dir))
