"""Datasets between stages: reading JSONL/JSON/Parquet files and folders, ids, errors, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from scalequest import io
from scalequest.io import DataError, atomic_write_text, input_files, input_fingerprint, read_rows


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- reading ---------------------------------------------------------------------------------------


def test_jsonl_file_gets_ids_from_stem_and_row_number(tmp_path):
    path = tmp_path / "qs.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": "b"}\n   \n{"question": "c"}\n')
    assert list(read_rows(path)) == [
        {"id": "qs-0", "question": "a"},
        {"id": "qs-1", "question": "b"},
        {"id": "qs-2", "question": "c"},
    ]


def test_existing_ids_are_kept(tmp_path):
    path = write_jsonl(
        tmp_path / "qs.jsonl", [{"id": "x7", "question": "a"}, {"question": "b"}, {"id": 3, "question": "c"}]
    )
    rows = list(read_rows(path))
    assert [row["id"] for row in rows] == ["x7", "qs-1", 3]
    assert rows[0] == {"id": "x7", "question": "a"}


def test_json_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"question": "a", "n": 1}, {"id": "k", "question": "b"}]))
    assert list(read_rows(path)) == [{"id": "data-0", "question": "a", "n": 1}, {"id": "k", "question": "b"}]


@pytest.mark.parametrize("content", ['{"question": "a"}', "[1, 2]", "[{]"])
def test_json_file_must_hold_a_list_of_objects(tmp_path, content):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert str(path) in str(err.value)


def test_parquet_file(tmp_path):
    path = write_parquet(tmp_path / "part.parquet", [{"question": "a", "n": 1}, {"question": "b", "n": 2}])
    assert list(read_rows(path)) == [
        {"id": "part-0", "question": "a", "n": 1},
        {"id": "part-1", "question": "b", "n": 2},
    ]


def test_damaged_parquet_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="Parquet") as err:
        list(read_rows(path))
    assert str(path) in str(err.value)


def test_folder_of_mixed_files_in_name_order(tmp_path):
    folder = tmp_path / "in"
    write_jsonl(folder / "b.jsonl", [{"question": "b0"}, {"question": "b1"}])
    (folder / "a.json").write_text(json.dumps([{"question": "a0"}]))
    write_parquet(folder / "c.parquet", [{"question": "c0"}])
    (folder / "notes.txt").write_text("not data")
    (folder / "manifest.json").write_text("{}")  # never read as data
    assert [(row["id"], row["question"]) for row in read_rows(folder)] == [
        ("a-0", "a0"),
        ("b-0", "b0"),
        ("b-1", "b1"),
        ("c-0", "c0"),
    ]


def test_stage_output_folder_reads_only_its_shards(tmp_path):
    folder = tmp_path / "out"
    write_jsonl(folder / "shard-00001.jsonl", [{"id": "r2"}])
    write_jsonl(folder / "shard-00000.jsonl", [{"id": "r0"}, {"id": "r1"}])
    write_jsonl(folder / "extra.jsonl", [{"id": "nope"}])
    (folder / "manifest.json").write_text("{}")
    (folder / "config.yaml").write_text("stage: x\n")
    (folder / ".shard-00002.jsonl.tmp-123").write_text('{"id": "partial"}\n{"id": "trunc')
    (folder / io.STATS_DIR).mkdir()
    (folder / io.STATS_DIR / "00000.json").write_text("{}")
    assert [row["id"] for row in read_rows(folder)] == ["r0", "r1", "r2"]


def test_generated_ids_are_unique_across_files_with_dotted_names(tmp_path):
    folder = tmp_path / "in"
    write_jsonl(folder / "part.1.jsonl", [{"question": "a"}, {"question": "b"}])
    write_jsonl(folder / "part.2.jsonl", [{"question": "c"}, {"question": "d"}])
    ids = [row["id"] for row in read_rows(folder)]
    assert len(set(ids)) == 4, ids


def test_corrupt_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "qs.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": "b"}\n{"question": "c"\n{"question": "d"}\n')
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert f"{path}:4:" in str(err.value)
    assert "corrupt" in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupt_line_in_second_file_of_a_folder(tmp_path):
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [{"question": "a"}])
    bad = folder / "b.jsonl"
    bad.write_text('{"question": "b"}\nnot json\n')
    with pytest.raises(DataError) as err:
        list(read_rows(folder))
    assert f"{bad}:2:" in str(err.value)


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "3"])
def test_jsonl_line_must_be_an_object(tmp_path, line):
    path = tmp_path / "qs.jsonl"
    path.write_text('{"question": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match="object") as err:
        list(read_rows(path))
    assert f"{path}:2:" in str(err.value)


def test_non_utf8_file_is_a_data_error(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"question": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8") as err:
        list(read_rows(path))
    assert str(path) in str(err.value)


def test_non_utf8_json_file_is_a_data_error(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes('[{"question": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert str(path) in str(err.value)


def test_non_utf8_error_names_the_right_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"q": "a"}\n{"q": "b"}\n{"q": "c"}\n{"q": "\xff"}\n')
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert f"{path}:4:" in str(err.value)


def test_empty_folder_is_a_data_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DataError, match="holds no") as err:
        list(read_rows(folder))
    assert str(folder) in str(err.value)


def test_missing_input_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        list(read_rows(tmp_path / "nowhere.jsonl"))
    assert "nowhere.jsonl" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        input_fingerprint(tmp_path / "nowhere")


def test_empty_jsonl_file_has_no_rows(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert list(read_rows(path)) == []
    assert input_files(path) == [path]


def test_load_rows_matches_read_rows(tmp_path):
    write_jsonl(tmp_path / "out" / "shard-00000.jsonl", [{"id": "a"}, {"id": "b"}])
    assert io.load_rows(tmp_path / "out") == [{"id": "a"}, {"id": "b"}]
    assert io.load_rows(str(tmp_path / "out")) == [{"id": "a"}, {"id": "b"}]


# --- fingerprints, manifests -----------------------------------------------------------------------


def test_input_fingerprint_follows_the_data(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"question": "a"}])
    first = input_fingerprint(path)
    assert first == input_fingerprint(path)
    write_jsonl(path, [{"question": "b"}])
    assert input_fingerprint(path) != first


def test_input_fingerprint_of_a_stage_output_is_its_manifest(tmp_path):
    folder = tmp_path / "out"
    write_jsonl(folder / "shard-00000.jsonl", [{"id": "a"}])
    no_manifest = input_fingerprint(folder)
    (folder / io.MANIFEST).write_text(json.dumps({"stage": "x", "rows_out": 1}))
    with_manifest = input_fingerprint(folder)
    assert with_manifest != no_manifest
    (folder / io.MANIFEST).write_text(json.dumps({"stage": "x", "rows_out": 2}))
    assert input_fingerprint(folder) != with_manifest


def test_read_manifest(tmp_path):
    assert io.read_manifest(tmp_path) is None
    (tmp_path / io.MANIFEST).write_text('{"stage": "x"}')
    assert io.read_manifest(tmp_path) == {"stage": "x"}
    (tmp_path / io.MANIFEST).write_text('{"stage": ')
    with pytest.raises(DataError, match="--force"):
        io.read_manifest(tmp_path)


# --- writing ---------------------------------------------------------------------------------------


def test_atomic_write_text_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "deeper" / "file.json"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second \u00e9")
    assert path.read_text(encoding="utf-8") == "second \u00e9"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.json"]
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_remove_temporary_files(tmp_path):
    (tmp_path / io.STATS_DIR).mkdir()
    leftovers = [tmp_path / ".shard-00001.jsonl.tmp-123", tmp_path / io.STATS_DIR / ".00001.json.tmp-9"]
    keep = [tmp_path / "shard-00000.jsonl", tmp_path / io.STATS_DIR / "00000.json"]
    for path in leftovers + keep:
        path.write_text("x")
    io.remove_temporary_files(tmp_path)
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in keep)


def test_to_jsonl_round_trips_unicode(tmp_path):
    rows = [{"id": "a", "question": "\u00bfQu\u00e9? \u221a2"}, {"id": "b", "question": "line\nbreak"}]
    path = tmp_path / "shard-00000.jsonl"
    atomic_write_text(path, io.to_jsonl(rows))
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert list(read_rows(path)) == rows


def test_outputs_load_with_datasets(tmp_path):
    """A real stage output loads with `datasets.load_dataset("json", data_files=OUTPUT/shard-*.jsonl)`."""
    datasets = pytest.importorskip("datasets")
    from scalequest.runner import run_stage
    from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig

    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"question": f"What is {i} + {i}?", "meta": {"n": i}} for i in range(7)] + [{"question": ""}],
    )
    out = tmp_path / "out"
    run_stage(FilterLanguage(FilterLanguageConfig(input=source, output=out, shard_size=3, progress=False)))
    assert len(list(out.glob("shard-*.jsonl"))) == 3
    dataset = datasets.load_dataset(
        "json", data_files=str(out / "shard-*.jsonl"), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    rows = io.load_rows(out)
    assert dataset.num_rows == len(rows) == 7
    assert dataset["id"] == [row["id"] for row in rows] == [f"in-{i}" for i in range(7)]
    assert dataset["question"] == [row["question"] for row in rows]
    assert dataset[3]["meta"] == {"n": 3}
