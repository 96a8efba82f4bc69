"""filter-language: what it removes is kept under OUTPUT/removed/ with the reason and its evidence."""

from __future__ import annotations

import json
import random

import pytest

from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.stages import filter_language
from scalequest.stages.filter_language import (
    FilterLanguage,
    FilterLanguageConfig,
    distinct_ngrams,
    lsh_bands,
    normalized_text,
)


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


# Near-duplicates: 40 words, so that one word changed in the middle leaves (38 - 3) / (38 + 3) of the 3-word
# shingles in common, 0.854, above the default threshold 0.8; two words changed far apart leave 0.727.
BASE = (
    "A farmer has a large field with rows of corn and rows of beans, and every morning he walks along each row "
    "to count the plants that grew since the day before, how many plants does he count on Friday"
).split()
assert len(BASE) == 40


def changed(*positions: int) -> str:
    words = list(BASE)
    for position in positions:
        words[position] = f"other{position}"
    return " ".join(words)


def exact_jaccard(a: str, b: str, size: int = 3) -> float:
    def grams(text):
        words = normalized_text(text).split()
        return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}

    return len(grams(a) & grams(b)) / len(grams(a) | grams(b))


def test_a_near_duplicate_is_removed_with_the_pair_as_evidence_and_shared_phrasing_stays(tmp_path):
    rows = [
        {"id": "a", "question": " ".join(BASE)},
        {"id": "b", "question": changed(12)},  # one word changed: a near-duplicate of a
        # The same opening, a different question: far under the threshold.
        {"id": "c", "question": " ".join(BASE[:12]) + " and sells them at the market for 3 dollars a basket"},
        {"id": "d", "question": " ".join(BASE).upper()},  # an exact repeat stays an exact `duplicate`
    ]
    source = write(tmp_path / "q.jsonl", rows)
    manifest = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=source, output=tmp_path / "out", shard_size=2, progress=False)
    )
    assert [row["id"] for row in io.load_rows(tmp_path / "out")] == ["a", "c"]
    assert manifest["dropped"] == {"near_duplicate": 1, "duplicate": 1}
    (removed,) = io.read_removed(tmp_path / "out", "near_duplicate")
    similarity = exact_jaccard(rows[0]["question"], rows[1]["question"])
    assert similarity == pytest.approx(35 / 41)
    assert removed["id"] == "b" and removed["evidence"] == {"first": "a", "jaccard": round(similarity, 4)}
    assert exact_jaccard(rows[0]["question"], rows[2]["question"]) < 0.5
    near = manifest["near_dedup"]
    assert (near["bands"], near["rows_per_band"]) == (16, 8)
    assert near["questions_compared"] == 3 and near["removed"] == 1  # d was removed before, as a repeat
    assert manifest["diversity"]["near_duplicate_share"] == round(1 / 3, 6)


def test_near_dedup_threshold_none_turns_it_off(tmp_path):
    rows = [{"id": "a", "question": " ".join(BASE)}, {"id": "b", "question": changed(12)}]
    source = write(tmp_path / "q.jsonl", rows)
    config = FilterLanguageConfig(input=source, output=tmp_path / "out", near_dedup_threshold=None, progress=False)
    manifest = run_row_stage(FilterLanguage, config)
    assert [row["id"] for row in io.load_rows(tmp_path / "out")] == ["a", "b"]
    assert manifest["dropped"] == {}
    assert manifest["near_dedup"] is None and manifest["diversity"]["near_duplicate_share"] is None
    # A lower threshold than their similarity removes b; a higher one keeps it.
    kept, _ = run_by_hand(config.model_copy(update={"near_dedup_threshold": 0.85}))
    assert [row["id"] for row in kept] == ["a"]
    kept, _ = run_by_hand(config.model_copy(update={"near_dedup_threshold": 0.86}))
    assert [row["id"] for row in kept] == ["a", "b"]


def test_near_duplicates_point_to_the_first_kept_question_across_shards(tmp_path):
    rows = [
        {"id": "p", "question": changed(10)},
        {"id": "q", "question": changed(30)},  # 0.727 to p: kept
        {"id": "r", "question": " ".join(BASE)},  # 0.854 to both p and q: the near-duplicate of p, the first
        {"id": "s", "question": changed(10, 20)},  # 0.854 to p
        {"id": "t", "question": changed(10, 20, 25)},  # near s only (0.854), which was removed: kept
    ]
    source = write(tmp_path / "q.jsonl", rows)
    kept, removed = run_by_hand(FilterLanguageConfig(input=source, output=tmp_path / "out", shard_size=1))
    assert [row["id"] for row in kept] == ["p", "q", "t"]
    assert [(r["id"], r["reason"], r["evidence"]["first"]) for r in removed] == [
        ("r", "near_duplicate", "p"),
        ("s", "near_duplicate", "p"),
    ]
    assert (
        exact_jaccard(rows[4]["question"], rows[3]["question"])
        >= 0.8
        > exact_jaccard(rows[4]["question"], rows[0]["question"])
    )


def test_diversity_counts_distinct_word_ngrams_of_the_kept_questions(tmp_path, monkeypatch):
    rows = [
        {"id": "1", "question": "A b c?"},
        {"id": "2", "question": "a B d"},
        {"id": "3", "question": "x"},
        {"id": "4", "question": "a b c"},  # an exact repeat: removed, not counted
        {"id": "5", "question": "caf\u00e9 a b"},  # not ASCII: removed, not counted
    ]
    source = write(tmp_path / "q.jsonl", rows)
    manifest = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=source, output=tmp_path / "out", shard_size=2, progress=False)
    )
    # Words a b c | a b d | x: 1-grams {a, b, c, d, x} of 7; 2-grams {ab, bc, bd} of 4 (none across questions,
    # as "c a" would be); 3-grams {abc, abd} of 2.
    assert manifest["diversity"] == {
        "questions": 3,
        "words": 7,
        "distinct_1": round(5 / 7, 6),
        "distinct_2": 0.75,
        "distinct_3": 1.0,
        "near_duplicate_share": 0.0,
    }
    # In batches of two questions, n-grams repeated across batches count once: 13 words; 2-grams ab bc | ab bd |
    # ab bc cd | bc: 4 distinct of 8; 3-grams abc | abd | abc bcd: 3 of 4.
    figures = distinct_ngrams(["a b c", "a b d", "x", "a b c d", "b c"], batch=2)
    assert (figures["words"], figures["distinct_1"], figures["distinct_2"], figures["distinct_3"]) == (
        13,
        round(5 / 13, 6),
        0.5,
        0.75,
    )
    # Merged into the distinct n-grams every few hashes, against a plain count.
    monkeypatch.setattr(filter_language, "NGRAM_BUFFER", 5)
    rng = random.Random(0)
    texts = [" ".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 9))) for _ in range(300)]
    figures = distinct_ngrams(texts, batch=7)
    for n in (1, 2, 3):
        grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(len(t.split()) - n + 1)]
        assert figures[f"distinct_{n}"] == round(len(set(grams)) / len(grams), 6)
    assert distinct_ngrams([]) == {
        "questions": 0,
        "words": 0,
        "distinct_1": None,
        "distinct_2": None,
        "distinct_3": None,
    }


def test_lsh_bands_find_most_pairs_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9, 1.0):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128 and 1 - (1 - threshold**rows) ** bands >= 0.9
        if rows < 64:  # one row more per band would miss more than 10% of them
            assert 1 - (1 - threshold ** (rows + 1)) ** (128 // (rows + 1)) < 0.9
