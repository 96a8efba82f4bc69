"""scalequest inspect: kept rows, removed rows with their reason and evidence, one row by id, a seeded sample,
JSON lines for scripts, and one `error:` line for an unknown id or reason or a folder that is no stage output.

The output inspected is a real filter-language run on a few rows (no model needed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scalequest import io
from scalequest.cli import EXIT_BAD_INPUT, main
from scalequest.runner import run_row_stage
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig

LONG = (
    "A train leaves the first station at nine in the morning and travels east at sixty miles per hour while a "
    "second train leaves the other station at ten and travels west at forty miles per hour; the stations are "
    "three hundred miles apart, so at what time do the two trains meet?"
)
QUESTIONS = [
    {"id": "q0", "question": "What is 2 + 2?"},
    {"id": "q1", "question": "Caf\u00e9 prices: what is 3 + 4?"},  # non-ASCII: removed
    {"id": "q2", "question": LONG},
    {"id": "q3", "question": "what is 2 + 2"},  # a duplicate of q0 once normalised: removed
    {"id": "q4", "question": "Is [bold]this[/bold] markup? It must print as written: \\boxed{[1, 2]}"},
    *({"id": f"q{n}", "question": f"What is {n} times {n + 1}?"} for n in range(5, 12)),
]


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    source = root / "questions.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = root / "filter-language"
    run_row_stage(FilterLanguage, FilterLanguageConfig(input=source, output=out, progress=False, shard_size=4))
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # rich's width when stdout is not a terminal


def test_kept_rows_by_default_the_first_five_with_a_summary(output, capsys):
    code, out, err = run(capsys, output)
    assert code == 0 and err == ""
    assert "filter-language (finished)" in out
    assert "duplicate: 1, non_ascii: 1" in out  # removed, by reason
    assert "kept rows, the first 5" in out
    shown = [f"q{n}" for n in (0, 2, 4, 5, 6)]
    assert all(f"{row_id}  kept" in out for row_id in shown)
    assert "q7  kept" not in out and "q1  " not in out  # the sixth kept row; a removed row
    assert "[bold]this[/bold]" in out and "\\boxed{[1, 2]}" in out  # text is never read as rich markup


def test_long_text_is_wrapped_not_cut(output, capsys):
    code, out, _ = run(capsys, output, "--id", "q2")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    panel = [line.strip("│ ") for line in out.splitlines() if line.startswith("│")]
    assert " ".join(" ".join(panel).split()).count("at what time do the two trains meet?") == 1
    assert "A train leaves the first station" in out and len([line for line in panel if "train" in line]) >= 2


def test_sample_is_seeded_and_in_dataset_order(output, capsys):
    _, first, _ = run(capsys, output, "--sample", "3", "--seed", "7", "--json")
    _, again, _ = run(capsys, output, "--sample", "3", "--seed", "7", "--json")
    rows = json_lines(first)
    assert first == again and len(rows) == 3
    kept = [json.loads(line)["id"] for path in sorted(output.glob("shard-*.jsonl")) for line in path.open()]
    assert [row["id"] for row in rows] == [row_id for row_id in kept if row_id in {row["id"] for row in rows}]
    samples = {
        tuple(r["id"] for r in json_lines(run(capsys, output, "--sample", "3", "--seed", s, "--json")[1]))
        for s in range(6)
    }
    assert len(samples) > 1  # other seeds, other rows
    code, out, _ = run(capsys, output, "--sample", "2", "--seed", "7")
    assert code == 0 and "kept rows, 2 at random (seed 7)" in out and out.count("  kept") == 2
    code, out, _ = run(capsys, output, "--sample", "50", "--json")  # more than there are: all of them, in order
    assert [row["id"] for row in json_lines(out)] == kept


def test_removed_rows_with_reason_and_evidence(output, capsys):
    code, out, _ = run(capsys, output, "--removed", "non_ascii")
    assert code == 0 and "q1  removed: non_ascii" in out and "evidence" in out and '["é"]' in out
    assert "q3  removed" not in out
    code, out, _ = run(capsys, output, "--removed", "all", "--json")
    entries = json_lines(out)
    assert code == 0 and [(e["id"], e["reason"]) for e in entries] == [("q1", "non_ascii"), ("q3", "duplicate")]
    assert entries[1]["evidence"]["first"] == "q0" and entries[1]["row"]["question"] == "what is 2 + 2"
    assert entries == list(io.read_removed(output))  # as stored in removed/


def test_one_row_by_id_kept_or_removed(output, capsys):
    code, out, _ = run(capsys, output, "--id", "q3")
    assert code == 0 and "row 'q3': 1 found" in out and "q3  removed: duplicate" in out and '"first": "q0"' in out
    code, out, _ = run(capsys, output, "--id", "q5")
    assert code == 0 and "q5  kept" in out and "What is 5 times 6?" in out
    assert json_lines(run(capsys, output, "--id", "q5", "--json")[1]) == [
        {"id": "q5", "question": "What is 5 times 6?"}
    ]
    code, out, _ = run(capsys, output, "--id", "q1", "--json")
    assert code == 0 and json_lines(out)[0]["reason"] == "non_ascii"


def test_limit_zero_prints_every_kept_row_for_scripts(output, capsys):
    code, out, _ = run(capsys, output, "--json", "--limit", "0")
    assert code == 0 and len(json_lines(out)) == len(QUESTIONS) - 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--id", "nope"], "has no row with id 'nope' (kept or removed)"),
        (["--id", "q0", "--removed", "non_ascii"], "has no row with id 'q0' (removed for 'non_ascii')"),
        (
            ["--removed", "unsolvable"],
            "no rows removed for 'unsolvable' (reasons: duplicate (1), non_ascii (1); or: all)",
        ),
        (["--sample", "0"], "--sample must be at least 1"),
    ],
)
def test_unknown_id_or_reason_is_one_error_line(output, capsys, argv, message):
    code, out, err = run(capsys, output, *argv)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_folder_that_is_no_stage_output_is_one_error_line(output, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text('{"id": "a"}\n')
    for folder, message in [
        (tmp_path, "is not a stage output (no config.yaml and no manifest.json)"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "rows.jsonl", "is not a folder"),
    ]:
        code, _, err = run(capsys, folder)
        assert code == EXIT_BAD_INPUT and err.startswith("error: ") and message in err
    model = tmp_path / "qft"
    model.mkdir()
    (model / "config.yaml").write_text("stage: qft\nconfig: {}\n")
    (model / "manifest.json").write_text(json.dumps({"stage": "qft", "steps": 4, "config": {}}))
    (model / "config.json").write_text("{}")
    code, _, err = run(capsys, model)
    assert code == EXIT_BAD_INPUT and "is a model (the output of training stage 'qft'), not rows" in err


def test_an_unfinished_stage_shows_the_rows_it_has(output, tmp_path, capsys):
    import shutil

    copy = tmp_path / "unfinished"
    shutil.copytree(output, copy)
    (copy / "manifest.json").unlink()
    code, out, _ = run(capsys, copy, "--limit", "1")
    assert code == 0 and "filter-language (not finished)" in out and "q0  kept" in out


def test_the_module_never_shadows_the_standard_library_inspect():
    import inspect as standard

    import scalequest.inspect as ours

    assert ours.__name__ == "scalequest.inspect" and standard is not ours
    assert Path(standard.__file__).parent == Path(json.__file__).parent.parent  # the standard library's own
    assert callable(standard.signature) and sys.modules["inspect"] is standard
    import pydantic
    import torch

    # Libraries that use `inspect` at import and at run time still get the standard one.
    assert torch.nn.Linear(1, 1) is not None and pydantic.BaseModel.model_fields is not None
    assert "self" in standard.signature(torch.nn.Module.__init__).parameters
