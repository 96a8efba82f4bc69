"""filter-language: what it removes is kept under OUTPUT/removed/ with the reason and its evidence."""

from __future__ import annotations

import json

import pytest

from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig, normalized_text


def test_removed_rows_carry_reason_and_evidence_and_the_counts_stay(tmp_path):
    rows = [
        {"id": "a", "question": "How many apples?"},
        {"id": "b", "question": "  "},
        {"id": "c", "question": "¿Cuántas manzanas?"},
        {"id": "d", "question": "how   many APPLES?"},
    ]
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=source, output=tmp_path / "out", shard_size=2, progress=False)
    )
    assert [row["id"] for row in io.load_rows(tmp_path / "out")] == ["a"]
    assert manifest["dropped"] == {"empty": 1, "non_ascii": 1, "duplicate": 1}
    removed = {r["id"]: r for r in io.load_rows(tmp_path / "out" / "removed")}
    assert {i: r["reason"] for i, r in removed.items()} == {"b": "empty", "c": "non_ascii", "d": "duplicate"}
    assert removed["c"]["evidence"] == ["¿", "á"] and removed["c"]["row"] == rows[2]
    assert removed["d"]["evidence"] == {"normalized": "how many apples", "first": "a"}


@pytest.mark.parametrize(
    "text, same_as",
    [
        ("  What is 1+1?  ", "what is 1+1"),
        ("WHAT\tIS\n1+1", "what is 1+1"),
        ('"What is 1+1?!"', "what is 1+1"),
        ("Stra\u00dfe?", "strasse"),  # case folding
        ("\ufb01nd x", "find x"),  # NFKC: the ligature is two letters
        ("$5 + $3 = ?", "$5 + $3 ="),  # symbols stay, end punctuation goes
        ("?!", "?!"),  # nothing but punctuation: compared whole
    ],
)
def test_normalized_text(text, same_as):
    assert normalized_text(text) == same_as


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_by_hand(config: FilterLanguageConfig):
    """prepare + process over every shard, as the runner does, without its input checks (which refuse the
    repeated ids these tests need)."""
    stage = FilterLanguage(config)
    stage.prepare()
    results = [stage.process(shard) for shard in stage.input_shards()]
    return [row for r in results for row in r.rows], [entry for r in results for entry in r.removed]


def test_duplicates_are_found_by_text_never_by_id(tmp_path):
    rows = [
        {"id": "a", "question": "How many apples?"},
        {"id": "b", "question": "how many apples"},  # a real duplicate of a
        {"id": "b", "question": "How many pears?"},  # unique, but shares its id with the duplicate
        {"id": "c", "question": "How many pears"},  # a duplicate whose first occurrence shares an id
    ]
    source = write(tmp_path / "q.jsonl", rows)
    kept, removed = run_by_hand(FilterLanguageConfig(input=source, output=tmp_path / "out", shard_size=3))
    assert [row["question"] for row in kept] == ["How many apples?", "How many pears?"]
    assert [(r["row"]["question"], r["reason"], r["evidence"]["first"]) for r in removed] == [
        ("how many apples", "duplicate", "a"),
        ("How many pears", "duplicate", "b"),
    ]


def test_a_row_removed_for_another_reason_is_no_first_occurrence(tmp_path):
    rows = [{"id": "x", "question": "Stra\u00dfe?"}, {"id": "y", "question": "STRASSE"}, {"id": "z", "question": " "}]
    source = write(tmp_path / "q.jsonl", rows)
    manifest = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=source, output=tmp_path / "out", progress=False)
    )
    assert [row["id"] for row in io.load_rows(tmp_path / "out")] == ["y"]
    assert manifest["dropped"] == {"non_ascii": 1, "empty": 1}
    # Without the ASCII rule the first spelling stays and the second repeats it.
    manifest = run_row_stage(
        FilterLanguage,
        FilterLanguageConfig(input=source, output=tmp_path / "all", ascii_only=False, progress=False),
    )
    assert [row["id"] for row in io.load_rows(tmp_path / "all")] == ["x"]
    removed = {r["id"]: r for r in io.read_removed(tmp_path / "all", "duplicate")}
    assert removed["y"]["evidence"] == {"normalized": "strasse", "first": "x"}
