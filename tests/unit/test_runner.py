"""The stage runner: manifests, skipping finished work, resume per shard, refusing foreign folders.

Row stages under test: filter-language on synthetic JSONL, and generate-questions on the tiny random
Llama from conftest (12 questions, 3 per shard, 8 new tokens: about a second).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import tiny_generate_config, write_jsonl
from scalequest import io, runner
from scalequest.io import DataError
from scalequest.models import ModelError
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig
from scalequest.stages.generate_questions import GenerateQuestions, id_prefix

MANIFEST_KEYS = {
    "stage",
    "config",
    "config_hash",
    "input_fingerprint",
    "rows_in",
    "rows_out",
    "dropped",
    "tokens_in",
    "tokens_out",
    "package_versions",
    "wall_seconds",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def filter_config(source: Path, output: Path, **overrides) -> FilterLanguageConfig:
    return FilterLanguageConfig(input=source, output=output, progress=False, **overrides)


def mtimes(folder: Path) -> dict[str, int]:
    """Modification times (ns) of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.jsonl"))}


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp-*"))


class Counting(GenerateQuestions):
    """GenerateQuestions that records which shards it processed and how often it loaded the model."""

    def __init__(self, config):
        super().__init__(config)
        self.processed: list[int] = []
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1
        super().setup()

    def process(self, shard):
        self.processed.append(shard.index)
        return super().process(shard)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """One uninterrupted generate-questions run: (folder, manifest, rows). Copy it before changing it."""
    out = tmp_path_factory.mktemp("reference") / "gen"
    manifest = runner.run_stage(GenerateQuestions(tiny_generate_config(out, tiny_model_dir)))
    return out, manifest, io.load_rows(out)


@pytest.fixture
def finished(reference, tmp_path) -> Path:
    """A private copy of the reference run (file times preserved)."""
    out = tmp_path / "gen"
    shutil.copytree(reference[0], out)
    return out


# --- manifest --------------------------------------------------------------------------------------


def test_generate_manifest_fields(reference, tiny_model_dir):
    out, manifest, rows = reference
    assert MANIFEST_KEYS <= set(manifest)
    config = tiny_generate_config(out, tiny_model_dir)
    assert manifest["stage"] == "generate-questions"
    assert manifest["config"] == config.model_dump(mode="json")
    assert manifest["config_hash"] == config.config_hash()
    assert manifest["input_fingerprint"] is None
    assert manifest["rows_in"] == manifest["rows_out"] == len(rows) == 12
    assert manifest["dropped"] == {}
    assert manifest["shards"] == 4
    assert manifest["tokens_in"] == sum(row["prompt_tokens"] for row in rows) > 0
    assert manifest["tokens_out"] == sum(row["completion_tokens"] for row in rows) > 0
    assert manifest["tokens_out"] <= 12 * 8
    assert sum(v for k, v in manifest["counts"].items() if k.startswith("finish_")) == 12
    assert {"python", "torch", "transformers", "scalequest"} <= set(manifest["package_versions"])
    assert isinstance(manifest["wall_seconds"], (int, float)) and manifest["wall_seconds"] >= 0
    assert json.loads((out / io.MANIFEST).read_text()) == manifest
    saved = yaml.safe_load((out / io.CONFIG).read_text())
    assert saved["stage"] == "generate-questions" and saved["config"] == manifest["config"]


def test_filter_manifest_fields_and_manifest_written_last(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": f"Q{i}?"} for i in range(5)])
    out = tmp_path / "out"
    written: list[str] = []
    real_write = io.atomic_write_text

    def recording_write(path, text):
        written.append(str(Path(path).relative_to(out)))
        real_write(path, text)

    monkeypatch.setattr(io, "atomic_write_text", recording_write)
    config = filter_config(source, out, shard_size=2)
    manifest = runner.run_stage(FilterLanguage(config))
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["stage"] == "filter-language"
    assert manifest["input_fingerprint"] == io.input_fingerprint(source)
    assert manifest["input"] == str(source)
    assert manifest["rows_in"] == manifest["rows_out"] == 5
    assert manifest["tokens_in"] == manifest["tokens_out"] == 0
    assert manifest["shards"] == 3
    # config.yaml first, then per shard its stats before its rows, and the manifest last, once.
    assert written[0] == io.CONFIG
    assert written[-1] == io.MANIFEST and written.count(io.MANIFEST) == 1
    for index in range(3):
        assert written.index(f"{io.STATS_DIR}/{index:05d}.json") < written.index(f"shard-{index:05d}.jsonl")
    times = {name: time for name, time in mtimes(out).items() if name != "log.txt"}  # its last line follows
    assert times[io.MANIFEST] == max(times.values())
    assert not temp_files(out)


# --- skipping, forcing, refusing -------------------------------------------------------------------


def test_finished_stage_with_same_config_is_skipped(finished, reference, tiny_model_dir):
    before = mtimes(finished)
    stage = Counting(tiny_generate_config(finished, tiny_model_dir))
    manifest = runner.run_stage(stage)
    assert stage.processed == [] and stage.setups == 0
    assert mtimes(finished) == before
    assert manifest == json.loads((finished / io.MANIFEST).read_text()) == reference[1]


def test_progress_and_output_do_not_defeat_the_skip(finished, tiny_model_dir):
    before = mtimes(finished)
    stage = Counting(tiny_generate_config(finished, tiny_model_dir, progress=True))
    runner.run_stage(stage)
    assert stage.processed == [] and mtimes(finished) == before


def test_force_redoes_a_finished_stage(finished, reference, tiny_model_dir):
    before = shard_mtimes(finished)
    (finished / "stray.txt").write_text("removed by --force")
    stage = Counting(tiny_generate_config(finished, tiny_model_dir))
    manifest = runner.run_stage(stage, force=True)
    assert stage.processed == [0, 1, 2, 3]
    after = shard_mtimes(finished)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)
    assert not (finished / "stray.txt").exists()
    assert io.load_rows(finished) == reference[2]  # seeded per shard: same rows again
    assert manifest["rows_out"] == 12


@pytest.mark.parametrize("change", [{"num": 13}, {"sampling": {"max_new_tokens": 8, "seed": 1}}, {"shard_size": 4}])
def test_other_config_on_finished_shards_needs_force(finished, tiny_model_dir, change):
    before = mtimes(finished)
    with pytest.raises(DataError, match="--force") as err:
        runner.run_stage(GenerateQuestions(tiny_generate_config(finished, tiny_model_dir, **change)))
    assert str(finished) in str(err.value)
    assert mtimes(finished) == before


def test_other_config_on_an_unfinished_run_with_shards_needs_force(finished, tiny_model_dir):
    (finished / io.MANIFEST).unlink()
    (finished / "shard-00002.jsonl").unlink()
    with pytest.raises(DataError, match="--force"):
        runner.run_stage(GenerateQuestions(tiny_generate_config(finished, tiny_model_dir, num=13)))


def test_changed_input_data_needs_force(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}, {"question": "B?"}])
    out = tmp_path / "out"
    runner.run_stage(FilterLanguage(filter_config(source, out)))
    write_jsonl(source, [{"question": "A?"}, {"question": "C?"}])
    with pytest.raises(DataError, match="--force"):
        runner.run_stage(FilterLanguage(filter_config(source, out)))
    manifest = runner.run_stage(FilterLanguage(filter_config(source, out)), force=True)
    assert [row["question"] for row in io.load_rows(out)] == ["A?", "C?"]
    assert manifest["input_fingerprint"] == io.input_fingerprint(source)


@pytest.mark.parametrize("force", [False, True])
def test_output_folder_of_another_stage_is_refused(finished, tmp_path, force):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    before = mtimes(finished)
    with pytest.raises(DataError) as err:
        runner.run_stage(FilterLanguage(filter_config(source, finished)), force=force)
    assert "generate-questions" in str(err.value) and "filter-language" in str(err.value)
    assert mtimes(finished) == before


def test_generate_into_a_filter_output_is_refused(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    out = tmp_path / "filtered"
    runner.run_stage(FilterLanguage(filter_config(source, out)))
    with pytest.raises(DataError) as err:
        runner.run_stage(GenerateQuestions(tiny_generate_config(out, tiny_model_dir)))
    assert "generate-questions" in str(err.value) and "filter-language" in str(err.value)


@pytest.mark.parametrize("force", [False, True])
def test_non_empty_foreign_folder_is_refused(tmp_path, force):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty") as err:
        runner.run_stage(FilterLanguage(filter_config(source, out)), force=force)
    assert str(out) in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_output_that_is_a_file_is_refused(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    out = tmp_path / "out.jsonl"
    out.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        runner.run_stage(FilterLanguage(filter_config(source, out)))


def test_existing_empty_folder_is_accepted(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    out = tmp_path / "out"
    out.mkdir()
    assert runner.run_stage(FilterLanguage(filter_config(source, out)))["rows_out"] == 1


# --- resume ----------------------------------------------------------------------------------------


def test_resume_regenerates_only_the_missing_shard(finished, reference, tiny_model_dir):
    (finished / "shard-00001.jsonl").unlink()
    (finished / io.MANIFEST).unlink()
    before = shard_mtimes(finished)
    stage = Counting(tiny_generate_config(finished, tiny_model_dir))
    manifest = runner.run_stage(stage)
    assert stage.processed == [1] and stage.setups == 1
    after = shard_mtimes(finished)
    assert {name: after[name] for name in before} == before
    assert "shard-00001.jsonl" in after
    assert io.load_rows(finished) == reference[2]
    ref_manifest = reference[1]
    for key in ("rows_in", "rows_out", "tokens_in", "tokens_out", "dropped", "counts", "shards", "config_hash"):
        assert manifest[key] == ref_manifest[key], key


@pytest.mark.parametrize(
    "change",
    [{"engine": {"batch_size": 1}}, {"keep_removed": False}, {"max_failed_fraction": 0.5}],
    ids=["lower-batch-size", "keep-removed", "max-failed-fraction"],
)
def test_an_operational_change_resumes_instead_of_starting_over(finished, reference, tiny_model_dir, change):
    """E.g. a lower batch size after an out-of-memory error: finished shards stay, the rest is done."""
    (finished / "shard-00001.jsonl").unlink()
    (finished / io.MANIFEST).unlink()
    before = shard_mtimes(finished)
    engine = {"model": str(tiny_model_dir), **change.pop("engine", {})}
    stage = Counting(tiny_generate_config(finished, tiny_model_dir, engine=engine, **change))
    manifest = runner.run_stage(stage)
    assert stage.processed == [1]
    after = shard_mtimes(finished)
    assert {name: after[name] for name in before} == before
    assert manifest["config_hash"] == reference[1]["config_hash"]
    assert [row["id"] for row in io.load_rows(finished)] == [row["id"] for row in reference[2]]


def test_operational_fields_are_listed_in_one_place():
    from scalequest.config import OPERATIONAL_FIELDS, without_operational

    dump = {"output": "o", "batch_size": 8, "engine": {"batch_size": 4, "model": "m"}, "reward": {"max_retries": 1}}
    assert without_operational(dump) == {"batch_size": 8, "engine": {"model": "m"}, "reward": {}}
    assert {"*.batch_size", "*.max_concurrency", "*.request_timeout", "*.max_retries"} <= OPERATIONAL_FIELDS


def test_resume_after_manifest_loss_only_rewrites_the_manifest(finished, reference, tiny_model_dir):
    (finished / io.MANIFEST).unlink()
    before = shard_mtimes(finished)
    stage = Counting(tiny_generate_config(finished, tiny_model_dir))
    manifest = runner.run_stage(stage)
    assert stage.processed == [] and stage.setups == 0
    assert shard_mtimes(finished) == before
    assert manifest["rows_out"] == 12 and (finished / io.MANIFEST).is_file()


def test_leftover_temp_files_are_removed_and_never_read(finished, reference, tiny_model_dir):
    (finished / "shard-00001.jsonl").unlink()
    (finished / io.MANIFEST).unlink()
    # What a killed run leaves: a half-written shard (valid-looking rows!) and a stats temp file.
    (finished / ".shard-00001.jsonl.tmp-123").write_text('{"id": "q00000003", "question": "GARBAGE"}\n{"id": "q0')
    (finished / io.STATS_DIR / ".00001.json.tmp-123").write_text('{"rows_in": 99')
    (finished / io.STATS_DIR / "00001.json").write_text(json.dumps({"rows_in": 99}))  # stats without its shard
    runner.run_stage(GenerateQuestions(tiny_generate_config(finished, tiny_model_dir)))
    assert not temp_files(finished)
    rows = io.load_rows(finished)
    assert rows == reference[2]
    assert "GARBAGE" not in {row["question"] for row in rows}
    assert json.loads((finished / io.MANIFEST).read_text())["rows_in"] == 12


def test_temp_files_in_an_input_folder_are_never_read(finished, reference, tmp_path):
    (finished / ".shard-00004.jsonl.tmp-77").write_text('{"id": "ghost", "question": "GHOST"}\n')
    out = tmp_path / "filtered"
    manifest = runner.run_stage(FilterLanguage(filter_config(finished, out, ascii_only=False, deduplicate=False)))
    assert manifest["rows_in"] == 12
    assert "ghost" not in {row["id"] for row in io.load_rows(out)}
    assert manifest["input_stage"] == "generate-questions"


# --- bad input writes nothing ----------------------------------------------------------------------


def test_corrupt_input_writes_nothing(tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"question": f"Q{i}?"}) for i in range(30)]
    lines[24] = '{"question": "broken'
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        runner.run_stage(FilterLanguage(filter_config(source, out, shard_size=2)))
    assert f"{source}:25:" in str(err.value)
    assert not out.exists()


def test_missing_field_writes_nothing(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}] * 5 + [{"text": "no question"}])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="'question'") as err:
        runner.run_stage(FilterLanguage(filter_config(source, out, shard_size=2)))
    assert "in-5" in str(err.value)
    assert not out.exists()


def test_missing_model_path_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="does-not-exist"):
        runner.run_stage(GenerateQuestions(tiny_generate_config(out, "./does-not-exist")))
    assert not out.exists()


# --- filter-language -------------------------------------------------------------------------------

FILTER_ROWS = [
    {"id": "k1", "question": "What is 1+1?", "extra": {"keep": True}},  # kept
    {"id": "e1", "question": ""},  # empty
    {"id": "e2", "question": "  \n\t "},  # empty (whitespace only)
    {"id": "n1", "question": "Combien co\u00fbte 3\u20ac ?"},  # non-ASCII
    {"id": "d1", "question": "what  is 1+1?"},  # duplicate of k1 (case, whitespace), next shard
    {"id": "k2", "question": "Find x: 2x = 4."},  # kept
    {"id": "d2", "question": " WHAT IS\n1+1? "},  # duplicate of k1
    {"id": "d3", "question": "Find x:\t2x  =  4."},  # duplicate of k2
    {"id": "e3", "question": " "},  # empty
    {"id": "n2", "question": "H\u00e9llo?"},  # non-ASCII
    {"id": "k3", "question": "A brand new question?"},  # kept
]


def test_filter_language_counts_each_reason(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    out = tmp_path / "out"
    manifest = runner.run_stage(FilterLanguage(filter_config(source, out, shard_size=3)))
    rows = io.load_rows(out)
    assert [row["id"] for row in rows] == ["k1", "k2", "k3"]
    assert rows[0] == FILTER_ROWS[0]  # rows pass through unchanged
    assert manifest["dropped"] == {"empty": 3, "non_ascii": 2, "duplicate": 3}
    assert manifest["rows_in"] == 11 and manifest["rows_out"] == 3
    assert manifest["shards"] == 4


def test_first_occurrence_is_kept_when_its_duplicate_comes_first_in_a_later_shard(tmp_path):
    rows = [{"question": f"Unique {i}?"} for i in range(5)] + [{"question": "Same?"}] + [{"question": "  same? "}] * 3
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    manifest = runner.run_stage(FilterLanguage(filter_config(source, out, shard_size=2)))
    kept = io.load_rows(out)
    assert [row["id"] for row in kept] == [f"in-{i}" for i in range(6)]
    assert manifest["dropped"] == {"duplicate": 3}


def test_filter_language_switches_and_field(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in ["caf\u00e9?", "A?", "a?", ""]])
    manifest = runner.run_stage(
        FilterLanguage(
            filter_config(
                source, tmp_path / "o1", field="text", ascii_only=False, deduplicate=False, near_dedup_threshold=None
            )
        )
    )
    assert manifest["rows_out"] == 3 and manifest["dropped"] == {"empty": 1}
    manifest = runner.run_stage(FilterLanguage(filter_config(source, tmp_path / "o2", field="text")))
    assert [row["text"] for row in io.load_rows(tmp_path / "o2")] == ["A?"]
    assert manifest["dropped"] == {"empty": 1, "non_ascii": 1, "duplicate": 1}


def test_empty_input_file_gives_empty_output_and_a_warning(tmp_path, caplog):
    source = tmp_path / "empty.jsonl"
    source.write_text("")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        manifest = runner.run_stage(FilterLanguage(filter_config(source, out)))
    assert manifest["rows_in"] == manifest["rows_out"] == 0
    assert (out / io.MANIFEST).is_file()
    assert any(r.levelno == logging.WARNING and "no rows" in r.getMessage() for r in caplog.records)


def test_input_that_is_a_stage_output_with_no_rows_left(tmp_path, caplog):
    """Every row of the first pass is dropped (its shards are empty files): the second pass finishes empty."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": ""}, {"question": "caf\u00e9"}])
    first = tmp_path / "first"
    assert runner.run_stage(FilterLanguage(filter_config(source, first)))["rows_out"] == 0
    second = tmp_path / "second"
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        manifest = runner.run_stage(FilterLanguage(filter_config(first, second)))
    assert manifest["rows_in"] == manifest["rows_out"] == 0
    assert manifest["input_stage"] == "filter-language"
    assert any("no rows" in r.getMessage() for r in caplog.records)


def test_input_that_is_an_empty_stage_output_finishes_empty(tmp_path, tiny_model_dir, caplog):
    empty = tmp_path / "gen"
    assert runner.run_stage(GenerateQuestions(tiny_generate_config(empty, tiny_model_dir, num=0)))["rows_out"] == 0
    out = tmp_path / "filtered"
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        manifest = runner.run_stage(FilterLanguage(filter_config(empty, out)))
    assert manifest["rows_in"] == manifest["rows_out"] == 0
    assert any("no rows" in r.getMessage() for r in caplog.records)
    assert io.load_rows(out) == []


# --- generate-questions ----------------------------------------------------------------------------


def test_generate_question_rows(reference, tiny_model_dir):
    folder, manifest, rows = reference
    prefix = id_prefix(tiny_generate_config(folder, tiny_model_dir))
    assert re.fullmatch(r"q-[0-9a-f]{6}-", prefix) and manifest["id_prefix"] == prefix
    assert [row["id"] for row in rows] == [f"{prefix}{i:08d}" for i in range(12)]
    assert len({row["id"] for row in rows}) == 12
    for row in rows:
        assert set(row) == {
            "id",
            "question",
            "generator",
            "sampling",
            "prompt_tokens",
            "completion_tokens",
            "finish_reason",
        }
        assert isinstance(row["question"], str) and row["question"] == row["question"].strip()
        assert row["generator"] == str(tiny_model_dir)
        assert row["sampling"]["temperature"] == 1.0
        assert row["sampling"]["top_p"] == 0.99
        assert row["sampling"]["max_new_tokens"] == 8
        assert isinstance(row["sampling"]["seed"], int)
        assert isinstance(row["prompt_tokens"], int) and row["prompt_tokens"] > 0
        assert 1 <= row["completion_tokens"] <= 8
        assert row["finish_reason"] in {"stop", "length"}
        if row["finish_reason"] == "length":
            assert row["completion_tokens"] == 8
    # Rows of one shard share its seed; shards differ.
    seeds = [row["sampling"]["seed"] for row in rows]
    assert seeds[0:3] == [seeds[0]] * 3 and len(set(seeds)) == 4


def test_generate_is_reproducible_and_ids_are_stable(reference, tmp_path, tiny_model_dir):
    out = tmp_path / "again"
    runner.run_stage(GenerateQuestions(tiny_generate_config(out, tiny_model_dir)))
    assert io.load_rows(out) == reference[2]


def test_seed_changes_the_text_and_the_ids(reference, tmp_path, tiny_model_dir):
    out = tmp_path / "seed1"
    runner.run_stage(
        GenerateQuestions(tiny_generate_config(out, tiny_model_dir, sampling={"max_new_tokens": 8, "seed": 1}))
    )
    rows = io.load_rows(out)
    assert not {row["id"] for row in rows} & {row["id"] for row in reference[2]}  # another run: disjoint ids
    assert [row["id"][-8:] for row in rows] == [row["id"][-8:] for row in reference[2]]
    changed = sum(a["question"] != b["question"] for a, b in zip(rows, reference[2]))
    assert changed >= 10, f"only {changed} of 12 questions changed with another seed"


def test_generate_last_shard_is_short(tmp_path, tiny_model_dir):
    out = tmp_path / "odd"
    config = tiny_generate_config(out, tiny_model_dir, num=5, shard_size=2, sampling={"max_new_tokens": 2})
    manifest = runner.run_stage(GenerateQuestions(config))
    assert sorted(p.name for p in out.glob("shard-*.jsonl")) == [f"shard-0000{i}.jsonl" for i in range(3)]
    assert [row["id"] for row in io.load_rows(out)] == [f"{id_prefix(config)}{i:08d}" for i in range(5)]
    assert manifest["rows_out"] == 5 and manifest["shards"] == 3


def test_generate_with_n_samples_per_prompt_keeps_every_sample(tmp_path, tiny_model_dir):
    config = tiny_generate_config(
        tmp_path / "q", tiny_model_dir, num=7, shard_size=7, sampling={"max_new_tokens": 6, "n": 3}
    )
    manifest = runner.run_stage(GenerateQuestions(config))
    rows = io.load_rows(tmp_path / "q")
    assert [r["id"] for r in rows] == [f"{id_prefix(config)}{i:08d}" for i in range(7)]
    assert manifest["rows_out"] == 7
    # 3 prompts (ceil(7 / 3)) were sent; each prompt's tokens are counted once.
    assert manifest["tokens_in"] == 3 * rows[0]["prompt_tokens"]


# --- bad input rows, refused before any output ---------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"id": "a", "question": "Q?"}, {"id": "a", "question": "R?"}],
            r"in.jsonl:2: duplicate id 'a' \(first at .*in.jsonl:1\)",
        ),
        ([{"id": "a", "question": 7}], r"in.jsonl:1: row a: field 'question' must be text, not int"),
        ([{"id": "a", "question": None}], r"in.jsonl:1: row a: field 'question' must be text, not NoneType"),
        ([{"id": ["a"], "question": "Q?"}], r"in.jsonl:1: id must be a non-empty string or an integer, not \['a'\]"),
        ([{"id": "", "question": "Q?"}], r"in.jsonl:1: id must be a non-empty string"),
        ([{"id": True, "question": "Q?"}], r"in.jsonl:1: id must be"),
        ([{"id": "a", "question": "Q?"}, {"id": "b"}], r"in.jsonl:2: row b has no field 'question'"),
    ],
    ids=["duplicate-id", "numeric-text", "null-text", "list-id", "empty-id", "bool-id", "missing-field"],
)
def test_bad_rows_are_named_by_file_and_line_before_any_output(tmp_path, rows, message):
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(io.DataError, match=message):
        runner.run_stage(FilterLanguage(filter_config(source, tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_unique_row_sharing_nothing_but_text_layout_with_a_duplicate_is_found_by_line(tmp_path):
    """The line numbers count blank lines, as an editor does."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "question": "Q?"}\n\n{"id": "a", "question": "R?"}\n')
    with pytest.raises(io.DataError, match=r"in.jsonl:3: duplicate id 'a' \(first at .*in.jsonl:1\)"):
        runner.run_stage(FilterLanguage(filter_config(source, tmp_path / "out")))


# --- inputs protected, one driver per output ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["same", "inside", "holding"])
@pytest.mark.parametrize("force", [False, True])
def test_an_output_overlapping_its_input_is_refused_even_with_force(finished, reference, tmp_path, where, force):
    target = {"same": finished, "inside": finished / "sub", "holding": finished.parent}[where]
    before = mtimes(finished)
    with pytest.raises(io.DataError, match="overlaps input"):
        runner.run_stage(FilterLanguage(filter_config(finished, target, field="question")), force=force)
    assert mtimes(finished) == before and io.load_rows(finished) == reference[2]


def test_a_second_driver_on_the_same_output_is_refused(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    out = tmp_path / "out"
    with runner.output_lock(out):
        with pytest.raises(io.DataError, match=r"output .*out is in use by process \d+ on "):
            runner.run_stage(FilterLanguage(filter_config(source, out)))
    assert not (out / runner.LOCK).exists()
    runner.run_stage(FilterLanguage(filter_config(source, out)))  # free again
    assert not (out / runner.LOCK).exists() and io.read_manifest(out) is not None


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    out = tmp_path / "out"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir()
    (out / runner.LOCK).write_text(f"{socket.gethostname()} {int(gone.stdout)}")
    manifest = runner.run_stage(FilterLanguage(filter_config(source, out)))
    assert manifest["rows_out"] == 3 and not (out / runner.LOCK).exists()


# --- models in the run hash ----------------------------------------------------------------------------------


def test_a_retrained_model_is_noticed(tiny_model_dir, tmp_path):
    """A model that is an earlier stage's output is known by its manifest: retraining it into the same folder
    makes the finished output stale, so it is not reported as done."""
    model = tmp_path / "qpo"
    shutil.copytree(tiny_model_dir, model)
    (model / io.CONFIG).write_text("stage: qpo\n")
    (model / io.MANIFEST).write_text('{"finished_at": "first"}')
    out = tmp_path / "gen"
    runner.run_stage(GenerateQuestions(tiny_generate_config(out, model, num=3)))
    stage = Counting(tiny_generate_config(out, model, num=3))
    runner.run_stage(stage)
    assert stage.processed == []  # same model: already finished
    (model / io.MANIFEST).write_text('{"finished_at": "second"}')
    with pytest.raises(io.DataError, match="another config, input or model"):
        runner.run_stage(Counting(tiny_generate_config(out, model, num=3)))
    again = Counting(tiny_generate_config(out, model, num=3))
    runner.run_stage(again, force=True)
    assert again.processed == [0]


def test_model_fingerprints(tiny_model_dir, tmp_path):
    from scalequest.models import ModelError, model_fingerprint

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    first = model_fingerprint(str(model))
    assert model_fingerprint(str(model)) == first
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes() + b"\0")
    assert model_fingerprint(str(model)) != first  # weights changed: size and time
    (model / io.CONFIG).write_text("stage: sft\n")
    with pytest.raises(ModelError, match="has not finished"):
        model_fingerprint(str(model))  # a training stage still running (or killed)
    assert model_fingerprint("embedded") == "embedded"
    assert model_fingerprint("someone/some-model", "v1") == "someone/some-model@v1"  # offline, not cached


# --- the progress view and OUTPUT/log.txt ---------------------------------------------------------------------

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) scalequest[\w.]*: ")


@pytest.fixture
def screen(monkeypatch):
    """The console the progress view draws on, recorded (not a terminal: the final state is printed once)."""
    from io import StringIO

    from rich.console import Console

    from scalequest import progress

    console = Console(file=StringIO(), record=True, width=200)
    monkeypatch.setattr(progress, "CONSOLE", console)
    return console


def test_the_view_line_of_a_fake_stage(monkeypatch):
    from scalequest import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with progress.pipeline_step(2, 5, "filter-language@b"):
        view = progress.StageView("filter-language", total=10, done=2, removed=1, enabled=False)
    with view:
        assert progress.inner_bars_hidden()  # the engines' own bars are off while a stage runs
        clock[0] += 2.0
        view.shard_done({"index": 1, "rows_in": 4, "rows_out": 1, "dropped": {"duplicate": 3}, "tokens_out": 100})
        assert view.text() == "[2/5] filter-language@b 6/10 rows · 2.0 rows/s · 50 tok/s · ETA 0:00:02 · removed 4"
    assert not progress.inner_bars_hidden()
    assert progress.StageView("sft", None, unit="steps").text() == "sft 0 steps · 0.0 steps/s · ETA ?"


def test_the_view_shows_step_rows_rates_eta_and_rows_removed(tmp_path, screen):
    from scalequest import progress

    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    with progress.pipeline_step(2, 5, "filter-language"):
        manifest = runner.run_stage(
            FilterLanguage(FilterLanguageConfig(input=source, output=tmp_path / "out", shard_size=3))
        )
    lines = screen.export_text().splitlines()
    assert len(lines) == 1, lines  # one line for the stage, no other bar
    assert lines[0].startswith("[2/5] filter-language ━")
    assert "11/11 rows · " in lines[0] and " rows/s · " in lines[0] and " tok/s · ETA 0:00:00 · " in lines[0]
    assert lines[0].endswith(f"removed {sum(manifest['dropped'].values())}") and manifest["dropped"]


def test_progress_false_shows_nothing_and_hides_the_inner_bars(tmp_path, screen, capfd):
    from scalequest import progress

    hidden = []

    class Watching(FilterLanguage):
        def process(self, shard):
            hidden.append(progress.inner_bars_hidden())
            return super().process(shard)

    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    manifest = runner.run_stage(Watching(filter_config(source, tmp_path / "out", shard_size=3)))
    assert manifest["rows_out"] == 3 and hidden == [True] * 4
    assert screen.export_text() == ""
    captured = capfd.readouterr()
    assert "rows/s" not in captured.out + captured.err and "%|" not in captured.err


def log_lines(out: Path) -> list[str]:
    lines = (out / "log.txt").read_text().splitlines()
    assert lines and all(TIMESTAMPED.match(line) for line in lines), lines
    return [TIMESTAMPED.sub("", line) for line in lines]


def test_each_stage_logs_to_log_txt_and_a_resume_adds_to_it(finished, reference, tiny_model_dir):
    first = log_lines(finished)  # the reference run's log, with its progress off
    assert first[0] == f"generate-questions: started on 12 input rows -> {reference[0]}"
    assert [line.split(":")[1] for line in first[1:5]] == [" shard 0", " shard 1", " shard 2", " shard 3"]
    assert first[-1].startswith("generate-questions: finished: 12 rows in -> 12 out, 0 removed, ")
    (finished / "shard-00001.jsonl").unlink()
    (finished / io.MANIFEST).unlink()
    runner.run_stage(GenerateQuestions(tiny_generate_config(finished, tiny_model_dir)))
    assert io.load_rows(finished) == reference[2]  # log.txt is no data
    again = log_lines(finished)
    assert again[: len(first)] == first  # appended to
    assert again[len(first)] == (
        f"generate-questions: resuming in {finished}: 9 of 12 input rows done in 3 finished shards, skipping those"
    )
    assert again[len(first) + 1].startswith("generate-questions: shard 1: 3 rows in -> 3 out, ")
    assert again[-1].startswith("generate-questions: finished: 12 rows in -> 12 out")


def test_log_txt_is_no_foreign_file_nor_started_work_and_force_keeps_it(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("")  # e.g. a run that wrote its log, then everything else was deleted
    runner.run_stage(FilterLanguage(filter_config(source, out)))
    for path in out.iterdir():
        if path.name not in (io.CONFIG, "log.txt"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    # A started run (config.yaml and log.txt only) with another config is no work to protect: no --force needed.
    runner.run_stage(FilterLanguage(filter_config(source, out, ascii_only=False)))
    runner.run_stage(FilterLanguage(filter_config(source, out)), force=True)
    started = [line for line in log_lines(out) if ": started on " in line]
    assert len(started) == 3 and io.load_rows(out)[0] == FILTER_ROWS[0]


def test_a_failure_is_noted_in_log_txt(tmp_path):
    class Failing(FilterLanguage):
        def process(self, shard):
            raise RuntimeError("the disk is on fire")

    source = write_jsonl(tmp_path / "in.jsonl", FILTER_ROWS)
    with pytest.raises(RuntimeError):
        runner.run_stage(Failing(filter_config(source, tmp_path / "out")))
    assert log_lines(tmp_path / "out")[-1] == "filter-language: failed: RuntimeError: the disk is on fire"
