"""generate-responses: one row per (question, response), no-answer responses dropped and counted, chat and
plain prompts, the paper's sampling defaults, provenance carried over; a canned engine and the tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jsonl
from scalequest.runner import StageIncomplete, run_row_stage
from scalequest import io
from scalequest.engines.base import Completion, Engine, SamplingParams
from scalequest.stages.generate_questions import shard_seed
from scalequest.stages.generate_responses import GenerateResponses, GenerateResponsesConfig
from scalequest.templates import plain_solve_prompt, solve_message


pytestmark = pytest.mark.usefixtures("one_torch_thread")


QUESTIONS = [
    {
        "id": "q0",
        "question": "Tom has 3 apples and buys 5 more. How many apples?",
        "generator": "gen",
        "sampling": {"seed": 1},
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "finish_reason": "stop",
        "difficulty": 0.25,
    },
    {"id": "q1", "question": "What is 6 times 7?", "generator": "gen"},
    {"id": "q2", "question": "What is the sum of 12 and 30?", "generator": "gen"},
]

REPLIES = {
    QUESTIONS[0]["question"]: ["3 + 5 = 8, so \\boxed{8}.", "Tom has some apples.", "The answer is 8."],
    # QUESTIONS[1]: the engine fails for good
    QUESTIONS[2]["question"]: ["So the final answer is 42", "\\boxed{", "It is \\boxed{x + 1}"],
}


class CannedEngine(Engine):
    """Replies looked up by question; a question it does not know fails for good (returns [])."""

    def __init__(self, replies: dict[str, list[str]]):
        super().__init__()
        self.replies = replies
        self.calls: list[tuple[list, SamplingParams]] = []

    def question_of(self, prompt) -> str:
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        return next((q for q in {**ALL_REPLIES, **self.replies} if q in text), text)

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        results = []
        for prompt in prompts:
            texts = self.replies.get(self.question_of(prompt))
            results.append(
                []
                if texts is None
                else [Completion(t, 10, 5 + i, "stop" if i else "length") for i, t in enumerate(texts[: params.n])]
            )
        return self._count(results)


ALL_REPLIES = {**REPLIES, QUESTIONS[1]["question"]: ["6 * 7 = \\boxed{42}", "42", "It is 42."]}


def canned(engine: Engine):
    class Canned(GenerateResponses):
        def setup(self) -> None:
            from scalequest.templates import uses_chat_template

            self.engine = engine
            self.chat = uses_chat_template(engine, self.config.engine, self.config.prompt_format)

    return Canned


def config(source: Path, output: Path, model_dir: Path, **overrides) -> GenerateResponsesConfig:
    values = dict(input=source, output=output, progress=False, engine={"model": str(model_dir)}, sampling={"n": 3})
    values.update(overrides)
    return GenerateResponsesConfig(**values)


def test_paper_defaults():
    sampling = GenerateResponsesConfig(input="in", output="out").sampling
    assert (sampling.n, sampling.temperature, sampling.top_p, sampling.max_new_tokens) == (5, 0.7, 0.95, 2048)


def test_one_row_per_response_and_no_answer_responses_dropped(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    engine = CannedEngine(REPLIES)
    manifest = run_row_stage(canned(engine), config(source, tmp_path / "out", tiny_model_dir, max_failed_fraction=0.5))
    rows = io.load_rows(tmp_path / "out")
    assert [r["id"] for r in rows] == ["q0-r0", "q0-r2", "q2-r0", "q2-r2"]
    assert [r["answer"] for r in rows] == ["8", "8", "42", "x + 1"]
    assert [r["sample_index"] for r in rows] == [0, 2, 0, 2]
    first = rows[0]
    assert first["question_id"] == "q0" and first["question"] == QUESTIONS[0]["question"]
    assert first["response"] == "3 + 5 = 8, so \\boxed{8}."
    assert first["solver"] == str(tiny_model_dir) and first["generator"] == "gen" and first["difficulty"] == 0.25
    # the response's own token counts, not the question's; the question's sampling is not carried
    assert (first["prompt_tokens"], first["completion_tokens"], first["finish_reason"]) == (10, 5, "length")
    assert "sampling" not in first
    assert manifest["rows_in"] == 3 and manifest["rows_out"] == 4
    assert manifest["dropped"] == {"no_final_answer": 2, "failed": 1}  # accepted by max_failed_fraction
    assert manifest["counts"]["responses_generated"] == 6 and manifest["counts"]["finish_length"] == 2
    assert manifest["tokens_in"] == 20 and manifest["tokens_out"] == 2 * (5 + 6 + 7)
    assert manifest["solver"] == str(tiny_model_dir)


def test_failed_questions_stay_pending_and_a_rerun_retries_only_them(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    clean = run_row_stage(canned(CannedEngine(ALL_REPLIES)), config(source, tmp_path / "clean", tiny_model_dir))
    out = tmp_path / "out"
    settings = dict(shard_size=2)  # q0 and q1 share shard 0, q2 is shard 1
    failing = CannedEngine(REPLIES)
    with pytest.raises(StageIncomplete, match=r"1 of 3 rows failed \(the engine returned no completions: 1\)"):
        run_row_stage(canned(failing), config(source, out, tiny_model_dir, **settings))
    assert io.read_manifest(out) is None
    assert not io.shard_path(out, 0).exists() and io.shard_path(out, 1).is_file()  # what succeeded is kept
    assert (out / io.PARTIAL_DIR / "00000.json").is_file()

    working = CannedEngine(ALL_REPLIES)
    manifest = run_row_stage(canned(working), config(source, out, tiny_model_dir, **settings))
    ((prompts, _),) = working.calls  # only the failed question is asked again
    assert prompts == [[{"role": "user", "content": solve_message(QUESTIONS[1]["question"])}]]
    assert [r["id"] for r in io.load_rows(out)] == [r["id"] for r in io.load_rows(tmp_path / "clean")]
    assert io.load_rows(out) == io.load_rows(tmp_path / "clean")
    for key in ("rows_in", "rows_out", "dropped", "counts", "tokens_in", "tokens_out"):
        assert manifest[key] == clean[key], key
    assert not any((out / io.PARTIAL_DIR).iterdir())
    assert [r["id"] for r in io.read_removed(out)] == [r["id"] for r in io.read_removed(tmp_path / "clean")]


def test_a_dead_engine_stops_after_the_first_shard_and_names_the_untried_rows(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    dead = CannedEngine({})
    with pytest.raises(StageIncomplete, match="1 of 3 rows failed .* 2 not tried"):
        run_row_stage(canned(dead), config(source, tmp_path / "out", tiny_model_dir, shard_size=1))
    assert len(dead.calls) == 1


def test_chat_prompt_and_sampling(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    engine = CannedEngine(ALL_REPLIES)
    run_row_stage(canned(engine), config(source, tmp_path / "out", tiny_model_dir, shard_size=2, sampling={"seed": 7}))
    (prompts, params), (_, params_1) = engine.calls
    assert prompts[0] == [{"role": "user", "content": solve_message(QUESTIONS[0]["question"])}]
    assert (params.n, params.temperature, params.top_p, params.max_new_tokens, params.stop) == (5, 0.7, 0.95, 2048, ())
    assert (params.seed, params_1.seed) == (shard_seed(7, 0), shard_seed(7, 1))


def test_plain_prompt_for_base_models(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS[:1])
    engine = CannedEngine(ALL_REPLIES)
    run_row_stage(canned(engine), config(source, tmp_path / "out", tiny_model_dir, prompt_format="plain"))
    ((prompts, params),) = engine.calls
    assert prompts == [plain_solve_prompt(QUESTIONS[0]["question"])]
    assert "\nQuestion:" in params.stop


def test_carry_fields_and_question_field(tmp_path, tiny_model_dir):
    rows = [{"id": "a", "query": QUESTIONS[0]["question"], "generator": "gen", "difficulty": 0.5}]
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    run_row_stage(
        canned(CannedEngine(ALL_REPLIES)),
        config(source, tmp_path / "out", tiny_model_dir, question_field="query", carry_fields=["generator"]),
    )
    out = io.load_rows(tmp_path / "out")
    assert out[0]["question"] == rows[0]["query"] and out[0]["generator"] == "gen"
    assert "difficulty" not in out[0] and "query" not in out[0]
    with pytest.raises(io.DataError, match="row a has no field 'question'"):
        run_row_stage(canned(CannedEngine(ALL_REPLIES)), config(source, tmp_path / "out2", tiny_model_dir))


def test_tiny_model_end_to_end(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    manifest = run_row_stage(
        GenerateResponses,
        config(source, tmp_path / "out", tiny_model_dir, shard_size=2, sampling={"n": 2, "max_new_tokens": 6}),
    )
    generated = manifest["counts"]["responses_generated"]
    assert generated == 6
    assert manifest["rows_out"] + manifest["dropped"].get("no_final_answer", 0) == generated
    assert manifest["tokens_in"] > 0 and 0 < manifest["tokens_out"] <= 6 * 6
    assert manifest["shards"] == 2
    # a question's responses stay in its shard: shard i of questions -> shard i of responses
    for index, shard_questions in enumerate([{"q0", "q1"}, {"q2"}]):
        rows = list(io.read_file(io.shard_path(tmp_path / "out", index)))
        assert {r["question_id"] for r in rows} <= shard_questions


CODE_QUESTION = (
    "Write `def double(x: int) -> int:` returning twice x.\n\n"
    "```python\nassert double(2) == 4\nassert double(0) == 0\n```"
)
CODE_REPLIES = {
    CODE_QUESTION: [
        "Twice x:\n```python\ndef double(x):\n    return 2 * x\n```\nCheck:\n`assert double(5) == 10`",
        "```python\ndef double(x):\n    return x + 2\n```\nassert double(5) == 7",
        "I would multiply by two.",  # no code block
        "```python\ndef double(x)\n    return 2 * x\n```",  # does not parse
        "```python\ndef double(x):\n    while x == 0:\n        pass\n    return 2 * x\n```",  # hangs on a test
    ]
}


def test_code_responses_programs_extracted_and_bad_ones_counted(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "questions.jsonl", [{"id": "c0", "question": CODE_QUESTION}])
    engine = CannedEngine(CODE_REPLIES)
    cfg = config(source, tmp_path / "out", tiny_model_dir, domain="code", sampling={"n": 5})
    manifest = run_row_stage(canned(engine), cfg)
    rows = io.load_rows(tmp_path / "out")
    assert [r["id"] for r in rows] == ["c0-r0", "c0-r1", "c0-r4"]
    assert rows[0]["program"] == "def double(x):\n    return 2 * x\n" and "answer" not in rows[0]
    assert manifest["dropped"] == {"no_code": 1, "syntax": 1}
    prompt = engine.calls[0][0][0][-1]["content"]
    assert "```python" in prompt and "\\boxed" not in prompt  # the code solver's instruction
    assert sorted(r["reason"] for r in io.read_removed(tmp_path / "out")) == ["no_code", "syntax"]


def test_code_responses_executed_on_stated_and_written_tests(tmp_path, tiny_model_dir, sandbox):
    source = write_jsonl(tmp_path / "questions.jsonl", [{"id": "c0", "question": CODE_QUESTION}])
    cfg = config(
        source, tmp_path / "out", tiny_model_dir, domain="code", sampling={"n": 5}, execute=True, test_timeout=1.0
    )
    manifest = run_row_stage(canned(CannedEngine(CODE_REPLIES)), cfg)
    rows = io.load_rows(tmp_path / "out")
    # r1 fails double(0) == 0 and r4 hangs on it: both fail a stated test and are removed.
    assert [r["id"] for r in rows] == ["c0-r0"]
    (row,) = rows
    assert (row["tests_stated"], row["tests_stated_passed"], row["tests_total"]) == (2, 2, 4)
    assert row["tests_passed"] == 3  # its own double(5) == 10, not the other response's double(5) == 7
    assert row["sample_correct"] is True and 0 < row["codet_score"] <= 1
    assert manifest["dropped"] == {"no_code": 1, "syntax": 1, "failed_tests": 2}
    assert manifest["counts"]["program_ok"] == 3
    assert manifest["counts"]["tests_timeout"] == 1  # r4's hang on double(0), counted by reason


def test_code_responses_keep_failing_keeps_and_grades_them(tmp_path, tiny_model_dir, sandbox):
    source = write_jsonl(tmp_path / "questions.jsonl", [{"id": "c0", "question": CODE_QUESTION}])
    cfg = config(
        source,
        tmp_path / "out",
        tiny_model_dir,
        domain="code",
        sampling={"n": 5},
        execute=True,
        keep_failing=True,
        test_timeout=1.0,
    )
    run_row_stage(canned(CannedEngine(CODE_REPLIES)), cfg)
    rows = io.load_rows(tmp_path / "out")
    assert [(r["id"], r["sample_correct"], r["tests_stated_passed"]) for r in rows] == [
        ("c0-r0", True, 2),
        ("c0-r1", False, 1),  # x + 2 is right for x = 2 only
        ("c0-r4", False, 1),
    ]
