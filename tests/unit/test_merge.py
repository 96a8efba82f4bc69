"""merge: the questions of two generators into one dataset, each row keeping its generator and source.

Two generate-questions runs of the tiny random Llama from conftest, under two names (two generators), 4
questions each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_jsonl
from scalequest import io
from scalequest.cli import main
from scalequest.pipeline import describe_plan, load_pipeline
from scalequest.runner import run_row_stage
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig
from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig
from scalequest.stages.merge import Merge, MergeConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_model_dir) -> list[Path]:
    """Two finished generate-questions outputs, of two generators."""
    root = tmp_path_factory.mktemp("generated")
    outputs = []
    for name in ("generator-a", "generator-b"):
        model = shutil.copytree(tiny_model_dir, root / name)
        config = GenerateQuestionsConfig(
            output=root / f"q-{name}",
            num=4,
            shard_size=3,
            engine={"model": str(model)},
            sampling={"max_new_tokens": 4},
            progress=False,
        )
        run_row_stage(GenerateQuestions, config)
        outputs.append(config.output)
    return outputs


def merge(tmp_path: Path, inputs: list, **overrides) -> dict:
    config = MergeConfig(inputs=inputs, output=tmp_path / "merged", progress=False, **overrides)
    return run_row_stage(Merge, config)


def test_two_generators_merge_into_one_dataset(generated, tmp_path):
    a, b = (io.load_rows(folder) for folder in generated)
    manifest = merge(tmp_path, generated, shard_size=3)
    rows = io.load_rows(tmp_path / "merged")
    assert [row["id"] for row in rows] == [row["id"] for row in a + b]  # in order; the ids were unique already
    assert len({row["id"] for row in rows}) == 8
    assert [row["source"] for row in rows] == [str(generated[0])] * 4 + [str(generated[1])] * 4
    assert [row["generator"] for row in rows] == [a[0]["generator"]] * 4 + [b[0]["generator"]] * 4
    assert a[0]["generator"] != b[0]["generator"]
    assert [{k: v for k, v in row.items() if k != "source"} for row in rows] == a + b  # nothing else changes
    assert manifest["rows_in"] == manifest["rows_out"] == 8 and manifest["shards"] == 3
    assert [(i["input"], i["stage"], i["generator"], i["rows"]) for i in manifest["inputs"]] == [
        (str(generated[0]), "generate-questions", a[0]["generator"], 4),
        (str(generated[1]), "generate-questions", b[0]["generator"], 4),
    ]
    assert manifest["shared_ids"] == 0
    # Finished with the same inputs: skipped; an input that changes makes the fingerprint change.
    assert merge(tmp_path, generated, shard_size=3)["finished_at"] == manifest["finished_at"]
    fingerprint = Merge(MergeConfig(inputs=generated, output=tmp_path / "m")).input_fingerprint()
    assert fingerprint == manifest["input_fingerprint"]
    assert Merge(MergeConfig(inputs=generated[::-1], output=tmp_path / "m")).input_fingerprint() != fingerprint


def test_the_generator_comes_from_the_manifest_when_rows_lack_it(generated, tmp_path):
    stripped = shutil.copytree(generated[0], tmp_path / "stripped")
    for path in stripped.glob("shard-*.jsonl"):
        rows = [{k: v for k, v in row.items() if k != "generator"} for row in io.read_file(path)]
        write_jsonl(path, rows)
    # One stage further on: the generator is found up the chain of manifests.
    filtered = tmp_path / "filtered"
    run_row_stage(
        FilterLanguage,
        FilterLanguageConfig(
            input=stripped, output=filtered, ascii_only=False, deduplicate=False, keep_removed=False, progress=False
        ),
    )
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": "p1", "question": "What is 2+2?", "source": "gsm8k"}])
    merge(tmp_path, [stripped, filtered, plain])
    rows = io.load_rows(tmp_path / "merged")
    generator = io.read_manifest(generated[0])["generator"]
    kept = len(io.load_rows(filtered))
    assert [row.get("generator") for row in rows] == [generator] * (4 + kept) + [None]  # a file records none
    # An id of both copies is prefixed with its input's place; a row that names its source keeps it.
    assert [row["id"] for row in rows[:4]] == [f"in0-{row['id']}" for row in io.load_rows(stripped)]
    assert all(row["id"].startswith("in1-") for row in rows[4:-1])
    assert rows[-1]["id"] == "p1" and rows[-1]["source"] == "gsm8k"
    assert {row["source"] for row in rows[:4]} == {str(stripped)}


def test_ids_shared_between_inputs_are_prefixed_others_kept(tmp_path):
    first = write_jsonl(tmp_path / "one.jsonl", [{"id": "x", "question": "A?"}, {"id": "y", "question": "B?"}])
    second = write_jsonl(tmp_path / "two.jsonl", [{"id": "y", "question": "C?"}, {"id": "z", "question": "D?"}])
    manifest = merge(tmp_path, [first, second])
    rows = io.load_rows(tmp_path / "merged")
    assert [(row["id"], row["question"], row["source"]) for row in rows] == [
        ("x", "A?", str(first)),
        ("in0-y", "B?", str(first)),
        ("in1-y", "C?", str(second)),
        ("z", "D?", str(second)),
    ]
    assert "generator" not in rows[0] and manifest["shared_ids"] == 1


def test_an_unfinished_input_is_refused_in_one_line(generated, tmp_path, capsys):
    unfinished = shutil.copytree(generated[1], tmp_path / "unfinished")
    (unfinished / io.MANIFEST).unlink()
    with pytest.raises(io.DataError, match=r"input .*unfinished is the output of stage 'generate-questions', which "):
        merge(tmp_path, [generated[0], unfinished])
    assert not (tmp_path / "merged").exists()
    assert main(["merge", f"inputs=[{generated[0]},{unfinished}]", f"output={tmp_path / 'cli'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has not finished; rerun that stage first" in err
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["same.jsonl", "same.jsonl"], r"inputs\[1\] \(.*same.jsonl\) repeats inputs\[0\]"),
        (["dup.jsonl", "same.jsonl"], r"dup.jsonl:2: duplicate id 'd'"),
    ],
)
def test_repeated_inputs_and_repeated_ids_are_refused(tmp_path, inputs, message):
    write_jsonl(tmp_path / "same.jsonl", [{"id": "s", "question": "S?"}])
    write_jsonl(tmp_path / "dup.jsonl", [{"id": "d", "question": "A?"}, {"id": "d", "question": "B?"}])
    with pytest.raises(io.DataError, match=message):
        merge(tmp_path, [tmp_path / name for name in inputs])
    assert not (tmp_path / "merged").exists()


def test_merge_needs_two_inputs(tmp_path, capsys):
    assert main(["merge", f"inputs=[{tmp_path / 'a.jsonl'}]", f"output={tmp_path / 'm'}"]) == 2
    assert "inputs" in capsys.readouterr().err


def test_the_command_line_merges(generated, tmp_path, capsys):
    assert main(["merge", f"inputs=[{generated[0]},{generated[1]}]", f"output={tmp_path / 'cli'}"]) == 0
    assert "merge: 8 in -> 8 out" in capsys.readouterr().out
    assert len(io.load_rows(tmp_path / "cli")) == 8


def test_a_pipeline_step_feeds_the_stages_after_it_and_the_plan_shows_it(tmp_path, capsys):
    other = tmp_path / "other-run" / "generate-questions"
    path = tmp_path / "p.yaml"
    path.write_text(
        json.dumps(
            {
                "output_dir": str(tmp_path / "run"),
                "stages": {
                    "generate-questions": {"num": 4},
                    "merge": {"inputs": ["${stages.generate-questions.output}", str(other)]},
                    "filter-language": {},
                    "generate-responses": {},
                },
            }
        )
    )
    stages = dict(load_pipeline(path)[1])
    run = tmp_path / "run"
    assert [source.path for source in stages["merge"].inputs] == [run / "generate-questions", other]
    assert stages["filter-language"].input.path == run / "merge"  # the merged questions, not one generator's
    plan = describe_plan(path)
    assert "2. merge (row-wise; Question generation)" in plan
    assert f"inputs[0]: {run / 'generate-questions'}  <- generate-questions" in plan
    assert f"inputs[1]: {other}\n" in plan and f"input: {run / 'merge'}  <- merge" in plan
