"""filter-language: what it removes is kept under OUTPUT/removed/ with the reason and its evidence."""

from __future__ import annotations

import json

from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig


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
    assert removed["d"]["evidence"] == {"normalized": "how many apples?"}
