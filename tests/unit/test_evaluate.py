"""evaluate: per-sample rows, summary table, majority vote, prompt formats, bad benchmark input."""

from __future__ import annotations

import json

import pytest

from scalequest.cli import main
from scalequest.config import ConfigError, build_config
from scalequest.engines.base import Completion, Engine
from scalequest.runner import run_stage
from scalequest.stages.evaluate import Evaluate, EvaluateConfig, majority_answer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedEngine(Engine):
    """Answers each question with canned responses, so grading and the summary can be checked exactly."""

    def __init__(self, answers: dict[str, list[str]]):
        super().__init__()
        self.answers = answers
        self.prompts = []

    def generate(self, prompts, params):
        self.prompts += prompts
        results = []
        for prompt in prompts:
            text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            replies = next(v for k, v in self.answers.items() if k in text)
            results.append([Completion(r, 10, 4) for r in replies[: params.n]])
        return self._count(results)


def run_scripted(tmp_path, shared_data, answers, **overrides):
    values = dict(
        output=tmp_path / "eval",
        benchmarks=["gsm8k", "math500"],
        limit=2,
        data_dir=shared_data / "benchmarks",
        progress=False,
        grading_workers=1,
    )
    values.update(overrides)
    stage = Evaluate(EvaluateConfig(**values))
    engine = ScriptedEngine(answers)

    def setup():
        stage.engine, stage.chat = engine, values.get("prompt_format", "chat") != "plain"

    stage.setup = setup
    stage.teardown = lambda: None
    return run_stage(stage), engine


GSM_ANSWERS = {
    "Janet": ["She makes 9 dollars. The answer is $18."],
    "robe": ["\\boxed{3}"],
    "sphere": ["no idea"],  # no final answer
    "rectangular": ["I think \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"],
    "Convert the point": ["\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"],
    "Define": ["\\boxed{p - q}"],
}


def test_rows_and_summary(tmp_path, shared_data):
    manifest, engine = run_scripted(tmp_path, shared_data, GSM_ANSWERS)
    out = tmp_path / "eval"
    rows = [json.loads(line) for path in sorted(out.glob("shard-*.jsonl")) for line in path.read_text().splitlines()]
    assert [r["benchmark"] for r in rows] == ["gsm8k", "gsm8k", "math500", "math500"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["gsm8k-0"]["extracted_answer"] == "18" and by_id["gsm8k-0"]["correct"] is True
    assert by_id["gsm8k-1"]["correct"] is True
    for row in rows:
        assert {"prompt", "response", "extracted_answer", "gold", "correct", "response_tokens"} <= set(row)
    summary = {s["benchmark"]: s for s in manifest["summary"]}
    assert summary["gsm8k"]["n"] == 2 and summary["gsm8k"]["accuracy"] == 100.0
    assert summary["average"]["n"] == 4
    # Which copy was graded: both are bundled with the package, so no data_dir or Hub is needed.
    assert summary["gsm8k"]["source"] == "bundled:gsm8k_test" and summary["math500"]["source"] == "bundled:math500_test"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["benchmarks"] == manifest["summary"]
    assert "| gsm8k | 2 | 100.0 |" in (out / "summary.md").read_text()
    # The chain-of-thought request goes with every question through the chat template.
    assert all("\\boxed{}" in p[-1]["content"] for p in engine.prompts)


def test_majority_vote_over_k_samples(tmp_path, shared_data):
    answers = {
        "Janet": ["\\boxed{17}", "\\boxed{18}", "The answer is 18", "\\boxed{17}", "\\boxed{18}"],
        "robe": ["\\boxed{2}"] * 5,
    }
    manifest, _ = run_scripted(
        tmp_path, shared_data, answers, benchmarks=["gsm8k"], sampling={"n": 5, "temperature": 0.7}
    )
    rows = [json.loads(line) for line in (tmp_path / "eval" / "shard-00000.jsonl").read_text().splitlines()]
    assert rows[0]["extracted_answer"] == "18" and rows[0]["correct"] is True
    assert len(rows[0]["responses"]) == 5
    assert rows[1]["correct"] is False
    assert majority_answer(["1", "2", None, "2", "1"]) == "1"  # ties go to the first seen
    assert majority_answer([None, None]) is None


def test_plain_prompt_for_base_models(tmp_path, shared_data):
    _, engine = run_scripted(tmp_path, shared_data, GSM_ANSWERS, benchmarks=["gsm8k"], prompt_format="plain")
    assert all(isinstance(p, str) and p.startswith("Question: ") and p.endswith("Answer:") for p in engine.prompts)


def test_end_to_end_on_tiny_model(tmp_path, shared_data, tiny_model_dir, capsys):
    code = main(
        [
            "evaluate",
            f"output={tmp_path / 'e'}",
            "--limit",
            "2",
            "benchmarks=[gsm8k,amc23]",
            f"data_dir={shared_data / 'benchmarks'}",
            f"engine.model={tiny_model_dir}",
            "sampling.max_new_tokens=8",
            "progress=false",
            "grading_workers=1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| gsm8k | 2 | 0.0 |" in printed and "| amc23 | 2 | 0.0 |" in printed


def test_bad_benchmark_inputs(tmp_path, shared_data, capsys):
    with pytest.raises(ConfigError, match="known benchmarks: gsm8k, math500"):
        build_config(EvaluateConfig, {"output": str(tmp_path), "benchmarks": ["gsm9k"]})
    assert main(["evaluate", f"output={tmp_path / 'x'}", "benchmarks=[aime24]", f"data_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "aime24_test.jsonl" in err and str(tmp_path) in err and "data_dir" in err
    assert not (tmp_path / "x").exists()
