"""filter-solvability: reading the judge's final verdict, and the stage on canned and tiny-model judges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.engines import Completion, Engine, SamplingParams
from scalequest.io import DataError
from scalequest.stages import filter_solvability as solvability
from scalequest.stages.filter_solvability import FilterSolvability, FilterSolvabilityConfig, judge_prompt, parse_verdict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


VERDICTS = [
    # plain endings
    ("The question gives both prices and asks for the total, so it can be solved: 3 + 4 = 7.\nYes", "yes"),
    ("It asks for a speed but never says how long the trip took.\n\nNo", "no"),
    ("Solving: 12 / 4 = 3 pencils each.\n\nYes.", "yes"),
    ("Everything needed is given.\nYES!", "yes"),
    # markdown, labels, LaTeX
    ("Step 1: it is a math problem.\nStep 2: the cost per apple is missing.\n\n**No**.", "no"),
    ("The problem is well posed.\n\nAnswer: Yes", "yes"),
    ("We can compute 5 x 6 = 30.\n\n**Final verdict:** no  \n\n", "no"),
    ("The area is 24, so the question is answerable.\n\nFinal Answer: $\\boxed{\\text{Yes}}$", "yes"),
    ("There are two unknowns and one equation.\n\\boxed{No}", "no"),
    ("### Verdict\n**YES**", "yes"),
    ("Conclusion - No", "no"),
    # the verdict opens the last line and an explanation follows
    ("Let me check the conditions.\nNo, the number of students in the second class is never given.", "no"),
    ("Answer: Yes (every quantity is stated).", "yes"),
    ("I tried to solve it and got 42, so the answer is yes, it can be solved from its own conditions.", "yes"),
    # earlier words never outvote the final verdict (the official code kept these: "yes" appears)
    (
        "Yes, this is a math problem. But it says the train leaves at 3 pm and arrives at 2 pm the same day, which "
        "contradicts itself.\nNo.",
        "no",
    ),
    ("Is it a math question? Yes. Can it be solved from its conditions? No.", "no"),
    ("No information is missing at first sight.\nHowever the discount is never stated.\nVerdict: No", "no"),
    # no verdict at the end: undecided
    ("The question asks for the total number of apples. Tom has 3 and buys 5, so", "undecided"),
    ("This is solvable because nothing is missing.", "undecided"),
    ("Answer (Yes/No):", "undecided"),
    ("Should the answer be yes or no?", "undecided"),
    ("No matter how we read it, the problem has a single answer.", "undecided"),
    ("Yes, the problem is clear.\n\nI hope this helps!", "undecided"),
    ("", "undecided"),
    ("   \n\n**\n", "undecided"),
    ("The student's eyes", "undecided"),
]


@pytest.mark.parametrize("output,expected", VERDICTS)
def test_parse_verdict(output, expected):
    assert parse_verdict(output) == expected


def test_judge_prompt_holds_the_question_and_asks_for_a_final_yes_or_no():
    prompt = judge_prompt("  What is {x} if 2x = 4?  ")
    assert "What is {x} if 2x = 4?" in prompt  # braces in a question survive formatting
    assert prompt.rstrip().endswith("No if either fails.")
    assert "solve" in prompt and "math" in prompt


class CannedJudge(Engine):
    """A judge that answers from a table: question text -> judge output; None means the request failed."""

    def __init__(self, answers: dict[str, str | None]):
        super().__init__()
        self.answers = answers
        self.prompts: list = []
        self.params: list[SamplingParams] = []

    def generate(self, prompts, params):
        self.prompts.extend(prompts)
        self.params.append(params)
        results = []
        for prompt in prompts:
            text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            question = text.split("Question:\n", 1)[1].split("\n\nDecide", 1)[0]
            answer = self.answers[question]
            results.append(
                [] if answer is None else [Completion(answer, prompt_tokens=10, completion_tokens=len(answer.split()))]
            )
        return self._count(results)


CANNED = {
    "Tom has 3 apples and buys 5 more. How many apples does he have?": "3 + 5 = 8, everything is given.\n**Yes**",
    "A car drives for some time. How far does it go?": "The time and speed are missing.\n\nFinal verdict: No.",
    "Write a poem about autumn.": "Yes, I could write one. But this is not a math problem at all.\nNo",
    "Find x if 2x + 3 = 11.": "x = 4.\nAnswer: \\boxed{Yes}",
    "How many marbles are left after the game?": "Hmm, the starting number of marbles",
    "What is 7 times 8?": None,
}


def write_questions(path: Path, questions: list) -> Path:
    path.write_text("".join(json.dumps({"question": q, "generator": "g"}) + "\n" for q in questions))
    return path


def run_canned(tmp_path, monkeypatch, **overrides):
    judge = CannedJudge(CANNED)
    monkeypatch.setattr(solvability, "load_engine", lambda config: judge)
    source = write_questions(tmp_path / "questions.jsonl", list(CANNED) + ["   "])
    values = dict(input=source, output=tmp_path / "out", prompt_format="chat", shard_size=4, progress=False)
    values["max_failed_fraction"] = 0.2  # the judge fails one question for good
    values.update(overrides)
    manifest = run_row_stage(FilterSolvability, FilterSolvabilityConfig(**values))
    return manifest, io.load_rows(tmp_path / "out"), judge


def test_filter_keeps_final_yes_only(tmp_path, monkeypatch):
    manifest, rows, judge = run_canned(tmp_path, monkeypatch)
    assert [row["question"] for row in rows] == [
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "Find x if 2x + 3 = 11.",
    ]
    assert all(row["solvability_verdict"] == "yes" and row["generator"] == "g" for row in rows)
    assert rows[0]["solvability_judgement"] == CANNED[rows[0]["question"]]
    assert manifest["rows_in"] == 7 and manifest["rows_out"] == 2
    assert manifest["dropped"] == {"unsolvable": 2, "undecided": 1, "failed": 1, "empty": 1}
    assert manifest["counts"]["verdict_yes"] == 2 and manifest["counts"]["verdict_no"] == 2
    assert manifest["counts"]["verdict_undecided"] == 1
    assert manifest["judge_prompt"] == solvability.JUDGE_PROMPT
    # The judge is asked greedily, once per question, with the whole prompt as a user message.
    assert all(p.temperature == 0 and p.n == 1 and p.max_new_tokens == 2048 for p in judge.params)
    assert judge.prompts[0] == [{"role": "user", "content": judge_prompt(list(CANNED)[0])}]
    assert len(judge.prompts) == 6  # the blank question is never sent


def test_keep_undecided_keeps_and_marks_them(tmp_path, monkeypatch):
    manifest, rows, _ = run_canned(tmp_path, monkeypatch, keep_undecided=True, prompt_format="plain")
    verdicts = {row["question"]: row["solvability_verdict"] for row in rows}
    assert verdicts["How many marbles are left after the game?"] == "undecided"
    assert sorted(verdicts.values()) == ["undecided", "yes", "yes"]
    assert "undecided" not in manifest["dropped"] and manifest["counts"]["verdict_undecided"] == 1


def test_missing_question_field_fails_before_any_output(tmp_path):
    source = write_questions(tmp_path / "questions.jsonl", ["What is 2 + 2?"])
    config = FilterSolvabilityConfig(input=source, output=tmp_path / "out", field="problem", progress=False)
    with pytest.raises(DataError, match="field 'problem'"):
        run_row_stage(FilterSolvability, config)
    assert not (tmp_path / "out").exists()


def test_filter_runs_on_the_tiny_random_model(tmp_path, tiny_model_dir):
    questions = [
        "Tom has 3 apples and buys 5 more. How many apples?",
        "What is the sum of 12 and 30?",
        "Find x if 2x + 3 = 11.",
    ]
    source = write_questions(tmp_path / "questions.jsonl", questions)
    config = FilterSolvabilityConfig(
        input=source,
        output=tmp_path / "out",
        engine={"model": str(tiny_model_dir)},
        sampling={"max_new_tokens": 6},
        keep_undecided=True,
        progress=False,
    )
    manifest = run_row_stage(FilterSolvability, config)
    rows = io.load_rows(tmp_path / "out")
    assert manifest["rows_in"] == 3 and manifest["tokens_out"] > 0
    assert sum(v for k, v in manifest["counts"].items() if k.startswith("verdict_")) == 3
    # A random model rarely ends with a verdict; whatever it wrote, the row says what was parsed.
    kept_or_dropped = len(rows) + sum(manifest["dropped"].values())
    assert kept_or_dropped == 3
    for row in rows:
        assert row["solvability_verdict"] == parse_verdict(row["solvability_judgement"]) != "no"
    # Finished with the same config and input: skipped.
    assert run_row_stage(FilterSolvability, config)["finished_at"] == manifest["finished_at"]


def test_removed_questions_are_kept_with_the_judges_reasoning(tmp_path, monkeypatch):
    manifest, _, _ = run_canned(tmp_path, monkeypatch)
    removed = io.load_rows(tmp_path / "out" / "removed")
    assert manifest["removed"] == "removed/shard-*.jsonl"
    assert sorted(r["reason"] for r in removed) == sorted(r for r, n in manifest["dropped"].items() for _ in range(n))
    unsolvable = [r for r in removed if r["reason"] == "unsolvable"]
    assert all(r["evidence"]["judgement"] == CANNED[r["row"]["question"]] for r in unsolvable)
    assert all(r["id"] == r["row"]["id"] for r in removed)


def test_keep_removed_false_only_counts(tmp_path, monkeypatch):
    manifest, _, _ = run_canned(tmp_path, monkeypatch, keep_removed=False)
    assert manifest["dropped"]["unsolvable"] == 2 and "removed" not in manifest
    assert not (tmp_path / "out" / "removed").exists()
