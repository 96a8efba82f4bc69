"""One way to name data (scalequest.config.DataSource, read by scalequest.io): local files, folders, globs and
stage outputs, the data bundled with the package, and Hugging Face datasets (stubbed: the Hub is unreachable
here), with field renames; the benchmarks' Hub mappings; model revisions and the commits manifests record."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jsonl
from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.cli import EXIT_BAD_INPUT, main
from scalequest.config import BUNDLED_DATA, DataSource, build_config
from scalequest.io import DataError
from scalequest.math import BENCHMARKS, benchmark_source, load_benchmark
from scalequest.stages.filter_language import FilterLanguageConfig


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` answering from a dict {(id, config, split): rows}; every call is recorded."""
    import datasets

    tables: dict[tuple, list[dict]] = {}
    calls: list[tuple] = []

    def load_dataset(name, config=None, split=None, revision=None):
        calls.append((name, config, split, revision))
        if (name, config, split) not in tables:
            raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.Dataset.from_list(tables[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


# --- the bundled data --------------------------------------------------------------------------------


def test_bundled_data_is_small_licensed_and_readable():
    files = [io.bundled_file(name) for name in BUNDLED_DATA]
    assert sum(f.stat().st_size for f in files) <= 3 * 1024 * 1024
    readme = (io.BUNDLED_DIR / "README.md").read_text()
    assert readme.count("Apache-2.0 (this project)") == len(BUNDLED_DATA) and all(
        name in readme for name in BUNDLED_DATA
    )
    rows = {name: list(io.read_rows(DataSource(bundled=name))) for name in BUNDLED_DATA}
    assert len(rows["arithmetic_train"]) == 64 and "####" in rows["arithmetic_train"][0]["answer"]
    assert len(rows["arithmetic_test"]) == 100 and len(rows["code_tasks_train"]) == 312
    assert rows["arithmetic_train"][0]["id"] == "arithmetic-0"
    # The held-out set shares no question with the training set.
    assert not {r["question"] for r in rows["arithmetic_test"]} & {r["question"] for r in rows["arithmetic_train"]}


def test_no_public_benchmark_file_is_copied_into_the_package():
    shipped = {path.name for path in io.BUNDLED_DIR.glob("*.jsonl")}
    assert shipped == {f"{name}.jsonl" for name in BUNDLED_DATA}
    assert not shipped & {spec.file_name for name, spec in BENCHMARKS.items() if name != "arithmetic"}


def test_bundled_data_ships_in_the_package_metadata():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "data/*.jsonl" in project["tool"]["setuptools"]["package-data"]["scalequest"]


def test_an_unknown_bundled_name_lists_the_known_ones():
    with pytest.raises(Exception, match="arithmetic_train"):
        DataSource(bundled="gsm9k")


# --- local data --------------------------------------------------------------------------------------


def test_a_string_is_a_path_and_is_saved_as_one(tmp_path):
    source = DataSource.model_validate(str(tmp_path / "q.jsonl"))
    assert source.path == tmp_path / "q.jsonl" and str(source) == str(tmp_path / "q.jsonl")
    assert source.model_dump(mode="json") == str(tmp_path / "q.jsonl")  # config.yaml keeps what users write
    hub = DataSource(hub="openai/gsm8k", config="main")
    assert DataSource.model_validate(hub.model_dump(mode="json")) == hub


def test_files_folders_globs_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "data" / "a.jsonl", [{"question": "one"}])
    write_jsonl(tmp_path / "data" / "b.jsonl", [{"question": "two"}])
    pq.write_table(pa.Table.from_pylist([{"question": "three"}]), tmp_path / "data" / "c.parquet")
    (tmp_path / "data" / "notes.txt").write_text("not data")
    folder = [row["question"] for row in io.read_rows(tmp_path / "data")]
    assert folder == ["one", "two", "three"]
    assert [row["question"] for row in io.read_rows(str(tmp_path / "data" / "*.jsonl"))] == ["one", "two"]
    with pytest.raises(DataError, match=r"matches no \.jsonl, \.json or \.parquet file"):
        list(io.read_rows(str(tmp_path / "data" / "*.csv")))


def test_field_renames_apply_to_every_kind_of_source(tmp_path, fake_hub):
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "What is 1+1?", "solution": "\\boxed{2}"}])
    rows = list(io.read_rows(DataSource(path=path, fields={"question": "problem"})))
    assert rows == [{"id": "math-0", "solution": "\\boxed{2}", "question": "What is 1+1?"}]
    tables, _ = fake_hub
    tables[("org/math", None, "train")] = [{"problem": "What is 2+2?"}]
    rows = list(io.read_rows(DataSource(hub="org/math", fields={"question": "problem"})))
    assert rows == [{"id": "math-0", "question": "What is 2+2?"}]


def test_a_missing_field_is_named_with_the_fields_present(tmp_path, fake_hub):
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "What is 1+1?", "answer": "2"}])
    with pytest.raises(DataError, match=r"row math-0 has no field 'question_text' \(fields: id, problem, answer\)"):
        list(io.read_rows(DataSource(path=path, fields={"question": "question_text"})))
    tables, _ = fake_hub
    tables[("org/math", None, "train")] = [{"problem": "x", "answer": "2"}]
    with pytest.raises(DataError, match=r"has no field 'question_text' \(fields: problem, answer\)"):
        list(io.read_rows(DataSource(hub="org/math", fields={"question": "question_text"})))


def test_the_fingerprint_follows_the_data_and_the_renames(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "one"}])
    plain = io.input_fingerprint(path)
    assert io.input_fingerprint(DataSource(path=path, fields={"text": "question"})) != plain
    write_jsonl(path, [{"question": "two"}])
    assert io.input_fingerprint(path) != plain
    bundled = DataSource(bundled="arithmetic_test")
    assert io.input_fingerprint(bundled) == io.input_fingerprint(io.bundled_file("arithmetic_test"))


# --- Hugging Face datasets ---------------------------------------------------------------------------


def test_a_hub_source_passes_id_config_split_and_revision(fake_hub):
    tables, calls = fake_hub
    tables[("openai/gsm8k", "main", "test")] = [{"question": "q", "answer": "#### 1"}]
    source = DataSource(hub="openai/gsm8k", config="main", split="test", revision="abc123")
    assert [row["id"] for row in io.read_rows(source)] == ["gsm8k-0"]
    assert calls == [("openai/gsm8k", "main", "test", "abc123")]
    assert str(source) == "openai/gsm8k[main]:test@abc123"
    assert io.input_fingerprint(source)


def test_hub_only_keys_need_a_hub_source():
    with pytest.raises(Exception, match="'config' applies to a hub source only"):
        DataSource(path="q.jsonl", config="main")


def test_unreachable_or_missing_hub_dataset_is_one_line_with_the_way_out(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/none' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as error:
        list(io.read_rows(DataSource(hub="org/none")))
    message = str(error.value)
    assert "\n" not in message and "Hub dataset org/none" in message and "could not be reached" in message
    assert "input=data.jsonl" in message  # how to use a local file instead


def test_a_wrong_split_or_config_lists_the_valid_ones(monkeypatch):
    import datasets

    def wrong(name, config=None, split=None, revision=None):
        if config != "main":
            raise ValueError(f"BuilderConfig '{config}' not found. Available: ['main', 'socratic']")
        raise ValueError(f"Unknown split \"{split}\". Should be one of ['train', 'test'].")

    monkeypatch.setattr(datasets, "load_dataset", wrong)
    with pytest.raises(
        DataError, match=r"Hub dataset openai/gsm8k \(config 'mian'\): .*Available: \['main', 'socratic'\]"
    ):
        list(io.read_rows(DataSource(hub="openai/gsm8k", config="mian")))
    with pytest.raises(DataError, match=r"Unknown split \"tset\". Should be one of \['train', 'test'\]"):
        list(io.read_rows(DataSource(hub="openai/gsm8k", config="main", split="tset")))


def test_cli_names_a_bad_hub_input_and_writes_nothing(tmp_path, capsys, fake_hub):
    out = tmp_path / "out"
    code = main(["filter-language", "input={hub: someone/no-such-dataset}", f"output={out}"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1
    assert err.startswith("error: Hub dataset someone/no-such-dataset") and "has no such dataset" in err
    assert not out.exists()


def test_a_stage_reads_a_hub_input_and_records_it(tmp_path, fake_hub):
    from scalequest.stages.filter_language import FilterLanguage

    tables, _ = fake_hub
    tables[("org/questions", None, "train")] = [{"text": "How many?"}, {"text": "¿Cuántos?"}]
    config = build_config(
        FilterLanguageConfig,
        {
            "input": {"hub": "org/questions", "fields": {"question": "text"}},
            "output": str(tmp_path / "out"),
            "progress": False,
        },
    )
    manifest = run_row_stage(FilterLanguage, config)
    assert manifest["rows_out"] == 1 and manifest["input"] == "org/questions:train"
    assert [row["question"] for row in io.load_rows(tmp_path / "out")] == ["How many?"]


# --- benchmarks: bundled -> data_dir -> Hub ----------------------------------------------------------

# name -> (Hub id, config, split, a Hub row, the question and gold read from it)
HUB_MAPPINGS = {
    "gsm8k": ("openai/gsm8k", "main", "test", {"question": "Q?", "answer": "...\n#### 1,234"}, "Q?", "1234"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test", {"problem": "Q?", "answer": "\\frac12"}, "Q?", "\\frac12"),
    "college_math": (
        "di-zhang-fdu/College_Math_Test",
        None,
        "test",
        {"question": "Q?", "answer": "$10-4 n$"},
        "Q?",
        "10-4 n",
    ),
    "olympiadbench": (
        "Hothan/OlympiadBench",
        "OE_TO_maths_en_COMP",
        "train",
        {"question": "Q?", "final_answer": ["$69$"]},
        "Q?",
        "69",
    ),
    "gsm_hard": ("reasoning-machines/gsm-hard", None, "train", {"input": "Q?", "target": 27.0}, "Q?", "27"),
    "minerva_math": ("math-ai/minervamath", None, "test", {"question": "Q?", "answer": "1.6"}, "Q?", "1.6"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", {"problem": "Q?", "answer": "204"}, "Q?", "204"),
    "amc23": ("math-ai/amc23", None, "test", {"question": "Q?", "answer": 27.0}, "Q?", "27"),
}


def test_every_benchmark_names_its_hub_copy():
    # Every public benchmark; `arithmetic` is ours, bundled, with no Hub copy.
    assert set(HUB_MAPPINGS) == set(BENCHMARKS) - {"arithmetic"} and BENCHMARKS["arithmetic"].hub is None
    for name, (hub, config, split, *_) in HUB_MAPPINGS.items():
        spec = BENCHMARKS[name].hub
        assert (spec.hub, spec.config, spec.split) == (hub, config, split), name


@pytest.mark.parametrize("name", sorted(HUB_MAPPINGS))  # none is bundled: each reads the Hub without a local file
def test_benchmarks_without_a_local_copy_read_the_hub_with_its_fields(name, fake_hub, monkeypatch, tmp_path):
    monkeypatch.delenv("SCALEQUEST_DATA_DIR", raising=False)
    hub, config, split, row, question, gold = HUB_MAPPINGS[name]
    tables, calls = fake_hub
    tables[(hub, config, split)] = [row]
    assert str(benchmark_source(name, tmp_path)) == f"{hub}" + (f"[{config}]" if config else "") + f":{split}"
    assert load_benchmark(name, tmp_path) == [
        {"id": f"{name}-0", "benchmark": name, "question": question, "gold": gold}
    ]
    assert calls == [(hub, config, split, None)]


def test_hub_mappings_of_the_bundled_benchmarks_read_their_rows():
    for name in ("gsm8k", "math500"):
        _, _, _, row, question, gold = HUB_MAPPINGS[name]
        spec = BENCHMARKS[name]
        assert row[spec.question_field] == question and spec.gold(row) == gold


def test_benchmark_sources_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv("SCALEQUEST_DATA_DIR", raising=False)
    write_jsonl(tmp_path / "aime24_test.jsonl", [{"problem": "Q?", "answer": "1"}])
    write_jsonl(tmp_path / "arithmetic_test.jsonl", [{"question": "Q?", "answer": "#### 1"}])
    assert str(benchmark_source("arithmetic", tmp_path)) == "bundled:arithmetic_test"  # bundled first
    assert len(load_benchmark("arithmetic", tmp_path)) == 100
    assert benchmark_source("aime24", tmp_path).path == tmp_path / "aime24_test.jsonl"  # then data_dir
    assert benchmark_source("aime24").hub == "HuggingFaceH4/aime_2024"  # then the Hub
    monkeypatch.setenv("SCALEQUEST_DATA_DIR", str(tmp_path))
    assert benchmark_source("aime24").path == tmp_path / "aime24_test.jsonl"


# --- model revisions ---------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_dir):
    """A Hugging Face cache holding org/tiny at one commit (main points at it), as a download leaves it."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return commit


def test_a_revision_loads_that_snapshot_and_the_manifest_records_the_commit(tmp_path, hub_cache, monkeypatch):
    from scalequest.models import hub_commit, resolve_model
    from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig

    assert resolve_model("org/tiny", "main").endswith(f"snapshots/{hub_cache}")
    assert resolve_model("org/tiny", hub_cache).endswith(f"snapshots/{hub_cache}")
    assert hub_commit("org/tiny") == hub_cache and hub_commit(str(tmp_path)) is None
    config = GenerateQuestionsConfig(
        output=tmp_path / "q",
        num=2,
        progress=False,
        engine={"model": "org/tiny", "revision": "main", "device": "cpu", "dtype": "float32"},
        sampling={"max_new_tokens": 4},
    )
    manifest = run_row_stage(GenerateQuestions, config)
    assert manifest["models"]["engine.model"] == {"model": "org/tiny", "revision": "main", "commit": hub_cache}


def test_a_revision_that_cannot_be_fetched_is_one_line(tmp_path, hub_cache, capsys):
    code = main(
        ["generate-questions", f"output={tmp_path / 'q'}", "num=1", "engine.model=org/tiny", "engine.revision=v9"]
    )
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1
    assert err.startswith("error: cannot fetch model 'org/tiny' at revision 'v9'")
    assert not (tmp_path / "q").exists()


def test_a_revision_on_a_local_model_is_an_error(tiny_model_dir):
    from scalequest.models import ModelError, resolve_model

    with pytest.raises(ModelError, match="a revision applies to Hugging Face Hub models only"):
        resolve_model(str(tiny_model_dir), "main")


def test_every_model_field_has_a_revision():
    from scalequest.models import MODEL_FIELDS
    from scalequest.pipeline import STAGES

    def walk(cls):
        for name, info in cls.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields") and annotation is not DataSource:
                yield from walk(annotation)
            elif name in MODEL_FIELDS:
                yield cls, name

    found = [(cls, name) for config_class in (s.config for s in STAGES.values()) for cls, name in walk(config_class)]
    assert found
    for cls, name in found:
        assert MODEL_FIELDS[name] in cls.model_fields, f"{cls.__name__}.{name} has no {MODEL_FIELDS[name]}"
