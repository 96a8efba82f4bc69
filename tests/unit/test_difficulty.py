"""Difficulty: labelling fail rates, training the regressor, scoring, and the sampling rules.

Models: a canned solver engine (known fail rates), the tiny random Llama from conftest as a regressor
base (it learns a length signal in a few seconds), and a tiny random 1-output classifier for scoring.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import build_tiny_model_dir, write_jsonl
from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.engines import Completion, Engine
from scalequest.io import DataError
from scalequest.models import ModelError
from scalequest.stages import difficulty_label, difficulty_train
from scalequest.stages.difficulty_label import BUCKETS, DifficultyLabelConfig, LabelDifficulty, bucket_of
from scalequest.stages.difficulty_train import DifficultyTrainConfig, spearman, train_regressor
from scalequest.stages.filter_difficulty import (
    DifficultyRule,
    FilterDifficulty,
    FilterDifficultyConfig,
    RegressorConfig,
    check_regressor,
    choose_dropped,
    score_questions,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- difficulty-label ------------------------------------------------------------------------------


class CannedSolver(Engine):
    """Question -> the n solution texts it returns (None: the request failed for good)."""

    def __init__(self, solutions: dict[str, list[str] | None]):
        super().__init__()
        self.solutions = solutions
        self.params = []

    def generate(self, prompts, params):
        self.params.append(params)
        results = []
        for prompt in prompts:
            text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            question = next(q for q in self.solutions if q in text)
            texts = self.solutions[question]
            assert texts is None or len(texts) == params.n
            results.append([] if texts is None else [Completion(t, 20, 30) for t in texts])
        return self._count(results)


LABELLED = [
    {
        "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
        "answer": "48 + 24 = 72\n#### 72",
    },
    {"question": "A farm has 1,000 hens. How many hens?", "answer": "It says so.\n#### 1,000"},
    {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "What is 9 - 4?", "answer": "#### 5"},
]
SOLUTIONS = {
    LABELLED[0]["question"]: ["So \\boxed{72}.", "The answer is 72.", "I get \\boxed{70}.", "No idea."],  # 2 of 4 right
    LABELLED[1]["question"]: [
        "\\boxed{1000}",
        "\\boxed{1,000}",
        "The answer is 1000 hens.",
        "\\boxed{1000}",
    ],  # all right
    LABELLED[2]["question"]: ["\\boxed{6}", "\\boxed{4}", "", "The answer is 23."],  # all wrong
    LABELLED[3]["question"]: None,
}


def label_config(tmp_path, **overrides) -> DifficultyLabelConfig:
    if "input" not in overrides:
        overrides["input"] = str(write_jsonl(tmp_path / "gsm8k.jsonl", LABELLED))
    values = dict(
        output=tmp_path / "labels",
        sampling={"n": 4},
        prompt_format="chat",
        grading_workers=1,
        shard_size=2,
        progress=False,
        max_failed_fraction=0.25,  # the canned solver fails one of the four questions for good
    )
    values.update(overrides)
    return DifficultyLabelConfig(**values)


def test_label_records_fail_rates(tmp_path, monkeypatch):
    solver = CannedSolver(SOLUTIONS)
    monkeypatch.setattr(difficulty_label, "load_engine", lambda config: solver)
    manifest = run_row_stage(LabelDifficulty, label_config(tmp_path))
    rows = {row["question"]: row for row in io.load_rows(tmp_path / "labels")}
    assert [rows[q["question"]]["fail_rate"] for q in LABELLED[:3]] == [0.5, 0.0, 1.0]
    first = rows[LABELLED[0]["question"]]
    assert first["gold"] == "72" and first["samples"] == 4 and first["correct"] == 2
    assert first["answers"] == ["72", "72", "70", None] and "responses" not in first
    assert rows[LABELLED[1]["question"]]["gold"] == "1000"
    assert manifest["rows_in"] == 4 and manifest["rows_out"] == 3
    assert manifest["dropped"] == {"failed": 1}
    assert manifest["counts"]["samples"] == 12 and manifest["counts"]["no_answer"] == 2
    assert manifest["mean_fail_rate"] == 0.5 and manifest["input"] == str(tmp_path / "gsm8k.jsonl")
    assert manifest["fail_rate_histogram"] == {"very_easy": 1, "easy": 0, "medium": 1, "hard": 0, "very_hard": 1}
    assert all(p.n == 4 and p.temperature == 0.7 for p in solver.params)


def test_label_other_gold_formats(tmp_path, monkeypatch):
    monkeypatch.setattr(
        difficulty_label,
        "load_engine",
        lambda config: CannedSolver({"Simplify 2/4.": ["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}"]}),
    )
    rows = [{"problem": "Simplify 2/4.", "solution": "Divide: $\\boxed{\\frac12}$.", "answer": 0.5}]
    source = str(write_jsonl(tmp_path / "math.jsonl", rows))  # MATH-style fields
    for gold_format, field in (("boxed", "solution"), ("plain", "answer")):
        out = tmp_path / gold_format
        run_row_stage(
            LabelDifficulty,
            label_config(
                tmp_path,
                input=source,
                output=out,
                question_field="problem",
                answer_field=field,
                gold_format=gold_format,
                sampling={"n": 2},
            ),
        )
        (row,) = io.load_rows(out)
        assert row["fail_rate"] == 0.0, gold_format


def test_label_programs_graded_by_their_tests_in_the_sandbox(tmp_path, monkeypatch, sandbox):
    task = "Write `def inc(x: int) -> int:` returning x + 1."
    programs = [
        "```python\ndef inc(x):\n    return x + 1\n```",
        "```python\ndef inc(x):\n    return x + 2\n```",
        "No code, sorry.",
        "```python\ndef inc(x):\n    while True:\n        pass\n```",  # hangs: its test times out
    ]
    monkeypatch.setattr(difficulty_label, "load_engine", lambda config: CannedSolver({task: programs}))
    rows = [{"question": task, "tests": ["assert inc(1) == 2", "assert inc(-1) == 0"]}]
    cfg = label_config(
        tmp_path,
        input=str(write_jsonl(tmp_path / "tasks.jsonl", rows)),
        domain="code",
        answer_field="tests",
        gold_format="tests",
        test_timeout=1.0,
        keep_responses=True,
    )
    manifest = run_row_stage(LabelDifficulty, cfg)
    (row,) = io.load_rows(tmp_path / "labels")
    assert row["correct"] == 1 and row["fail_rate"] == 0.75
    assert row["answers"][0] == "def inc(x):\n    return x + 1\n" and row["answers"][2] is None
    assert manifest["counts"]["no_answer"] == 1
    prompt_config = cfg.model_copy(update={"gold_format": "gsm8k"})
    with pytest.raises(ValueError, match="gold_format: tests"):
        DifficultyLabelConfig(**{**prompt_config.model_dump(), "domain": "code"})
    with pytest.raises(ValueError, match="set domain: code"):
        DifficultyLabelConfig(**{**cfg.model_dump(), "domain": "math"})


def test_label_limit_takes_the_first_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(difficulty_label, "load_engine", lambda config: CannedSolver(SOLUTIONS))
    manifest = run_row_stage(LabelDifficulty, label_config(tmp_path, limit=2))
    assert manifest["rows_in"] == 2 and manifest["rows_out"] == 2


@pytest.mark.parametrize(
    "rows,overrides,message",
    [
        ([{"question": "What is 2 + 3?"}], {}, "row gsm8k-0 has no field 'answer' with its known answer"),
        ([{"question": "What is 2 + 3?", "solution": "#### 5"}], {}, "has no field 'answer'"),
        (
            [{"question": "What is 2 + 3?", "answer": "It is 5."}],
            {},
            "field 'answer' is not a solution ending in '#### N'",
        ),
        (
            [{"question": "What is 2 + 3?", "answer": "5"}],
            {"gold_format": "boxed"},
            "is not a solution with the answer in",
        ),
        ([{"problem": "What is 2 + 3?", "answer": "#### 5"}], {}, "has no question in field 'question'"),
    ],
)
def test_label_rejects_rows_without_gold_before_any_output(tmp_path, monkeypatch, rows, overrides, message):
    monkeypatch.setattr(difficulty_label, "load_engine", lambda config: pytest.fail("no model may load for bad input"))
    source = str(write_jsonl(tmp_path / "gsm8k.jsonl", rows))
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        run_row_stage(LabelDifficulty, label_config(tmp_path, input=source, **overrides))
    assert not (tmp_path / "labels").exists()


def test_label_reads_several_sources_each_with_its_own_fields_and_gold_format(tmp_path, monkeypatch):
    """The paper labels GSM8K and MATH train: one solver pass over both, each read its own way."""
    math_rows = [{"id": "m0", "problem": "What is 20 + 30 + 22?", "solution": "It is $\\boxed{72}$."}]
    math_file = write_jsonl(tmp_path / "math.jsonl", math_rows)
    solver = CannedSolver({**SOLUTIONS, math_rows[0]["problem"]: ["\\boxed{72}", "72", "\\boxed{1}", "\\boxed{72}"]})
    monkeypatch.setattr(difficulty_label, "load_engine", lambda config: solver)
    more = [{"input": str(math_file), "question_field": "problem", "answer_field": "solution", "gold_format": "boxed"}]
    manifest = run_row_stage(LabelDifficulty, label_config(tmp_path, limit=3, more_sources=more))
    rows = io.load_rows(tmp_path / "labels")
    assert [row["id"] for row in rows] == ["gsm8k-0", "gsm8k-1", "gsm8k-2", "m0"]
    assert rows[-1]["gold"] == "72" and rows[-1]["fail_rate"] == 0.5
    assert manifest["sources"] == [str(tmp_path / "gsm8k.jsonl"), str(math_file)]
    with pytest.raises(io.DataError, match="duplicate id 'gsm8k-0'"):
        again = [{"input": str(tmp_path / "gsm8k.jsonl")}]
        run_row_stage(LabelDifficulty, label_config(tmp_path, output=tmp_path / "l2", more_sources=again))


def test_label_reads_a_hub_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, config_name, split, revision=None):
        calls.append((name, config_name, split))
        return datasets.Dataset.from_list(LABELLED)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(difficulty_label, "load_engine", lambda config: CannedSolver(SOLUTIONS))
    manifest = run_row_stage(LabelDifficulty, label_config(tmp_path, input={"hub": "openai/gsm8k", "config": "main"}))
    assert calls[0] == ("openai/gsm8k", "main", "train")
    assert [row["id"] for row in io.load_rows(tmp_path / "labels")] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert manifest["input"] == "openai/gsm8k[main]:train" and manifest["input_fingerprint"]


def test_label_names_an_unreachable_hub_dataset(tmp_path):
    with pytest.raises(
        DataError, match="Hub dataset someone/no-such-dataset: the Hugging Face Hub could not be reached"
    ):
        run_row_stage(LabelDifficulty, label_config(tmp_path, input={"hub": "someone/no-such-dataset"}))
    assert not (tmp_path / "labels").exists()


def test_label_names_a_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_row_stage(LabelDifficulty, label_config(tmp_path, input=str(tmp_path / "nowhere.jsonl")))


# --- difficulty-train ------------------------------------------------------------------------------


def length_signal_rows(count: int, seed: int = 0) -> list[dict]:
    """Questions whose label grows with their length: a signal a tiny model learns in seconds."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        k = rng.randint(0, 9)
        rows.append({"question": "Tom has 3 apples" + " and 5 more apples" * k + ". How many?", "fail_rate": k / 9})
    return rows


def train_config(tmp_path, base: Path, **overrides) -> DifficultyTrainConfig:
    source = write_jsonl(tmp_path / "labels.jsonl", length_signal_rows(160))
    fields = dict(input=source, output=tmp_path / "regressor", model=str(base), eval_fraction=0.25, progress=False)
    # A constant, high learning rate for 8 epochs: enough for the tiny model to learn the length signal.
    schedule = dict(epochs=8, learning_rate=3e-3, lr_scheduler="constant", warmup_ratio=0.0, batch_size=16)
    return DifficultyTrainConfig(**{**fields, **schedule, "logging_steps": 5, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """(config, manifest) of one regressor trained on the length signal."""
    tmp = tmp_path_factory.mktemp("train")
    config = train_config(tmp, tiny_model_dir)
    return config, train_regressor(config)


def test_train_learns_the_signal_on_held_out_rows(trained):
    config, manifest = trained
    held_out = manifest["held_out"]
    assert held_out["rows"] == 40 and manifest["rows_in"] == 120
    assert held_out["spearman"] >= 0.8
    assert held_out["mse"] < 0.05  # predicting the mean would give about 0.11
    assert manifest["last_logged_loss"] < manifest["first_logged_loss"]
    assert json.loads((config.output / io.MANIFEST).read_text())["held_out"] == held_out


def test_trained_regressor_is_a_regression_model_and_rerun_is_skipped(trained):
    config, manifest = trained
    saved = json.loads((config.output / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]
    assert len(saved["id2label"]) == 1
    assert saved["problem_type"] == "regression" and saved["pad_token_id"] is not None
    assert check_regressor(RegressorConfig(model=str(config.output))) == str(config.output)
    assert train_regressor(config)["finished_at"] == manifest["finished_at"]


def test_train_rejects_rows_without_a_numeric_label(tmp_path, tiny_model_dir):
    source = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"question": "What is 1 + 1?", "fail_rate": 0.5}, {"question": "Why?", "fail_rate": "hard"}],
    )
    with pytest.raises(DataError, match="row bad-1 has no number in field 'fail_rate'"):
        train_regressor(train_config(tmp_path, tiny_model_dir, input=source))
    assert not (tmp_path / "regressor").exists()


def test_train_warns_when_every_label_is_the_same(tmp_path, tiny_model_dir, caplog):
    rows = [{"question": f"What is {i} + {i}?", "fail_rate": 1.0} for i in range(8)]
    config = train_config(tmp_path, tiny_model_dir, input=write_jsonl(tmp_path / "flat.jsonl", rows), max_steps=1)
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        manifest = train_regressor(config)
    assert "every row" in caplog.text and "fail_rate = 1" in caplog.text
    assert manifest["held_out"]["spearman"] is None  # undefined for constant labels


def test_spearman_with_ties_and_constants():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their average rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


# --- scoring ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-classifier"), head="classifier", seed=1)


def test_regressor_that_is_not_sequence_classification_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(
        ModelError, match=r"regressor .*tiny-causal.* is not a sequence-classification model .*LlamaForCausalLM"
    ):
        check_regressor(RegressorConfig(model=str(tiny_model_dir)))
    config = FilterDifficultyConfig(
        input=write_jsonl(tmp_path / "q.jsonl", [{"question": "What?"}]),
        output=tmp_path / "out",
        regressor=str(tiny_model_dir),
        progress=False,
    )
    with pytest.raises(ModelError, match="LlamaForCausalLM"):
        run_row_stage(FilterDifficulty, config)
    assert not (tmp_path / "out").exists()


def test_batched_scores_equal_one_at_a_time(classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    difficulty_train.prepare_tokenizer(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    questions = [row["question"] for row in length_signal_rows(12, seed=3)]
    one_by_one, _ = score_questions(model, tokenizer, questions, batch_size=1, max_length=512)
    batched, _ = score_questions(model, tokenizer, questions, batch_size=5, max_length=512)
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(one_by_one)) > 1


# --- sampling rules --------------------------------------------------------------------------------


def scored_pairs(count: int, seed: int = 0) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    return [(f"q{i}", rng.random()) for i in range(count)]


def test_buckets_are_quintiles_with_clipped_ends():
    assert [bucket_of(s) for s in (-0.3, 0.0, 0.199, 0.2, 0.4, 0.6, 0.79, 0.8, 1.0, 1.7)] == [
        "very_easy",
        "very_easy",
        "very_easy",
        "easy",
        "medium",
        "hard",
        "hard",
        "very_hard",
        "very_hard",
        "very_hard",
    ]


def test_threshold_drops_exactly_the_scores_below_it():
    scored = scored_pairs(200)
    dropped = choose_dropped(scored, DifficultyRule(threshold=0.35), seed="s")
    assert set(dropped) == {row_id for row_id, score in scored if score < 0.35}
    assert set(dropped.values()) == {"below_threshold"}


@pytest.mark.parametrize(
    "count,fraction,expected", [(200, 0.1, 20), (100, 0.29, 29), (7, 0.5, 3), (5, 0.1, 0), (10, 0.0, 0)]
)
def test_bottom_fraction_drops_the_easiest_share(count, fraction, expected):
    scored = scored_pairs(count, seed=count)
    dropped = choose_dropped(scored, DifficultyRule(bottom_fraction=fraction), seed="s")
    assert len(dropped) == expected
    if dropped:
        assert max(s for i, s in scored if i in dropped) < min(s for i, s in scored if i not in dropped)


def test_bottom_fraction_breaks_ties_by_input_order():
    scored = [("a", 0.5), ("b", 0.1), ("c", 0.1), ("d", 0.1), ("e", 0.9)]
    assert set(choose_dropped(scored, DifficultyRule(bottom_fraction=0.4), seed="s")) == {"b", "c"}


def test_target_shares_keep_the_most_rows_at_exact_shares():
    scored = [
        (f"q{i}", score) for i, score in enumerate([0.1] * 50 + [0.3] * 40 + [0.5] * 30 + [0.7] * 20 + [0.9] * 10)
    ]
    shares = {"very_easy": 0.1, "easy": 0.1, "medium": 0.2, "hard": 0.3, "very_hard": 0.3}
    dropped = choose_dropped(scored, DifficultyRule(target_shares=shares), seed="s")
    kept = Counter(bucket_of(score) for row_id, score in scored if row_id not in dropped)
    # very_hard limits the total: 10 / 0.3 -> 33 rows, split 3.3 / 3.3 / 6.6 / 9.9 / 9.9 by largest remainder.
    assert sum(kept.values()) == 33
    assert dict(kept) == {"very_easy": 3, "easy": 3, "medium": 7, "hard": 10, "very_hard": 10}
    assert set(dropped.values()) == {"bucket_share"}
    # Seeded: the same seed keeps the same rows, another seed other rows of the same counts.
    assert choose_dropped(scored, DifficultyRule(target_shares=shares), seed="s") == dropped
    assert choose_dropped(scored, DifficultyRule(target_shares=shares), seed="t") != dropped


@pytest.mark.parametrize("seed", range(5))
def test_target_shares_never_exceed_a_bucket_and_sum_to_the_total(seed):
    scored = scored_pairs(317, seed=seed)
    rng = random.Random(seed)
    weights = [rng.random() for _ in BUCKETS]
    shares = {name: w / sum(weights) for name, w in zip(BUCKETS, weights)}
    shares[BUCKETS[-1]] = 1 - sum(shares[name] for name in BUCKETS[:-1])
    dropped = choose_dropped(scored, DifficultyRule(target_shares=shares), seed="x")
    available = Counter(bucket_of(s) for _, s in scored)
    kept = Counter(bucket_of(s) for i, s in scored if i not in dropped)
    total = min(math.floor(available[b] / shares[b] + 1e-9) for b in BUCKETS)
    assert sum(kept.values()) == total
    for name in BUCKETS:
        assert kept[name] <= available[name]
        assert abs(kept[name] - shares[name] * total) < 1


def test_target_shares_with_unnamed_buckets_drop_those_buckets():
    scored = [("a", 0.1), ("b", 0.5), ("c", 0.9), ("d", 0.95)]
    dropped = choose_dropped(scored, DifficultyRule(target_shares={"very_hard": 1.0}), seed="s")
    assert set(dropped) == {"a", "b"}


@pytest.mark.parametrize(
    "rule,message",
    [
        ({"threshold": 0.2, "bottom_fraction": 0.1}, "only one of"),
        ({"target_shares": {"hard": 0.5, "very_hard": 0.4}}, "sum to 1"),
        ({"target_shares": {"hard": 1.2, "very_hard": -0.2}}, "negative"),
        ({"target_shares": {"impossible": 1.0}}, "impossible"),
        ({"bottom_fraction": 1.0}, "less than 1"),
    ],
)
def test_bad_rules_are_rejected(rule, message):
    with pytest.raises(ValidationError, match=message):
        DifficultyRule(**rule)


def test_empty_rule_keeps_everything():
    assert choose_dropped(scored_pairs(10), DifficultyRule(), seed="s") == {}


# --- filter-difficulty end to end ------------------------------------------------------------------


def question_rows() -> list[dict]:
    rows = []
    for i, row in enumerate(length_signal_rows(30, seed=7)):
        rows.append({"question": f"{row['question']} (case {i})", "generator": ["gen-a", "gen-b", None][i % 3]})
    return rows


def filter_config(tmp_path, regressor: Path, **overrides) -> FilterDifficultyConfig:
    values = dict(
        input=write_jsonl(tmp_path / "questions.jsonl", question_rows()),
        output=tmp_path / "filtered",
        regressor=str(regressor),
        shard_size=7,
        progress=False,
    )
    values.update(overrides)
    return FilterDifficultyConfig(**values)


def test_filter_applies_a_rule_per_generator(tmp_path, classifier_dir):
    config = filter_config(
        tmp_path,
        classifier_dir,
        generator_rules={"gen-a": {"bottom_fraction": 0.5}, "gen-b": {}},
        default_rule={"threshold": 0.0},
    )
    manifest = run_row_stage(FilterDifficulty, config)
    scored = io.load_rows(tmp_path / "filtered" / "scores")
    kept = {row["id"] for row in io.load_rows(tmp_path / "filtered")}
    assert len(scored) == 30 and all(isinstance(row["difficulty"], float) for row in scored)
    # The regressor's tokens (each question once) are the filter's, for `scalequest estimate`.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    assert manifest["tokens_in"] == sum(len(tokenizer(row["question"])["input_ids"]) for row in scored) > 0
    by_generator = {}
    for row in scored:
        by_generator.setdefault(row["generator"], []).append(row)
    gen_a = sorted(by_generator["gen-a"], key=lambda r: r["difficulty"])
    assert {r["id"] for r in gen_a if r["id"] in kept} == {r["id"] for r in gen_a[5:]}  # the easier half of 10 went
    assert all(r["id"] in kept for r in by_generator["gen-b"])
    assert {r["id"] for r in by_generator[None] if r["id"] in kept} == {
        r["id"] for r in by_generator[None] if r["difficulty"] >= 0.0
    }
    assert manifest["rows_in"] == 30 and manifest["rows_out"] == len(kept)
    assert manifest["dropped"].get("easiest_fraction") == 5
    assert manifest["by_generator"]["gen-a"]["rule"] == {"bottom_fraction": 0.5}
    assert manifest["by_generator"]["gen-b"]["rule"] == {"keep": "all"}
    assert manifest["by_generator"][""]["rule"] == {"threshold": 0.0}
    assert sum(manifest["histogram"]["before"].values()) == 30
    assert sum(manifest["histogram"]["after"].values()) == len(kept)
    assert list(manifest["histogram"]["after"]) == list(BUCKETS)
    # Output rows keep their order and carry the score; a rerun with the same config is skipped.
    out_rows = io.load_rows(tmp_path / "filtered")
    assert [r["id"] for r in out_rows] == [r["id"] for r in scored if r["id"] in kept]
    assert run_row_stage(FilterDifficulty, config)["finished_at"] == manifest["finished_at"]


def test_filter_resumes_and_reuses_outside_scores_on_a_rule_change(tmp_path, classifier_dir):
    scores = tmp_path / "scores"
    config = filter_config(tmp_path, classifier_dir, scores_dir=scores)
    first = run_row_stage(FilterDifficulty, config)
    assert first["dropped"] == {"easiest_fraction": 3}  # the default: floor(10% of 10) in each of 3 generator groups
    scored_at = {p.name: p.stat().st_mtime_ns for p in scores.glob("shard-*.jsonl")}
    # Kill simulation: one output shard and the manifest gone -> only that shard is redone, same rows.
    before = io.load_rows(tmp_path / "filtered")
    (tmp_path / "filtered" / "manifest.json").unlink()
    (tmp_path / "filtered" / "shard-00002.jsonl").unlink()
    run_row_stage(FilterDifficulty, config)
    assert io.load_rows(tmp_path / "filtered") == before
    # Another rule needs --force, which keeps the scores kept outside the output.
    other = filter_config(
        tmp_path, classifier_dir, scores_dir=scores, default_rule={"target_shares": {"very_easy": 1.0}}
    )
    with pytest.raises(DataError, match="--force"):
        run_row_stage(FilterDifficulty, other)
    run_row_stage(FilterDifficulty, other, force=True)
    assert {p.name: p.stat().st_mtime_ns for p in scores.glob("shard-*.jsonl")} == scored_at


def test_filter_that_drops_everything_writes_an_empty_output(tmp_path, classifier_dir, caplog):
    config = filter_config(tmp_path, classifier_dir, default_rule={"threshold": 1e9})
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        manifest = run_row_stage(FilterDifficulty, config)
    assert manifest["rows_out"] == 0 and manifest["dropped"] == {"below_threshold": 30}
    assert io.load_rows(tmp_path / "filtered") == []
    assert "no question left" in caplog.text


def test_filter_on_an_empty_input(tmp_path, classifier_dir, caplog):
    config = filter_config(tmp_path, classifier_dir, input=write_jsonl(tmp_path / "empty.jsonl", []))
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        manifest = run_row_stage(FilterDifficulty, config)
    assert manifest["rows_in"] == 0 and manifest["rows_out"] == 0
    assert io.load_rows(tmp_path / "filtered") == []
    assert manifest["histogram"]["before"] == dict.fromkeys(BUCKETS, 0)


def test_filter_on_a_trained_regressor(tmp_path, trained):
    """The whole chain: questions scored by the length-signal regressor; longer questions stay."""
    config, _ = trained
    rows = [{"question": r["question"], "generator": "g"} for r in length_signal_rows(20, seed=11)]
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    manifest = run_row_stage(
        FilterDifficulty,
        FilterDifficultyConfig(
            input=source,
            output=tmp_path / "f",
            regressor=str(config.output),
            default_rule={"bottom_fraction": 0.5},
            progress=False,
        ),
    )
    kept = io.load_rows(tmp_path / "f")
    assert manifest["rows_out"] == len(kept) == 10
    dropped_lengths = [len(r["question"]) for r in rows if r["question"] not in {k["question"] for k in kept}]
    assert sum(len(k["question"]) for k in kept) / 10 > sum(dropped_lengths) / 10
