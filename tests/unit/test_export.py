"""export: a Hugging Face dataset folder that datasets loads (Parquet, JSONL, the folder itself), with a card
holding the funnel of every earlier stage, found by following manifests back from the input.

The earlier stages are real runs on a few rows: filter-language, then generate-responses and reward-select
with a canned engine and a canned scorer (the reward model named in the config is a tiny classifier, which
reward-select's check reads), all with relative paths as a pipeline writes them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import build_tiny_model_dir
from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.engines.base import Completion, Engine
from scalequest.stages.export import Export, ExportConfig, lineage, write_parquet
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig
from scalequest.stages.generate_responses import GenerateResponses, GenerateResponsesConfig
from scalequest.scorers.base import Scorer
from scalequest.stages.reward_select import RewardSelect, RewardSelectConfig

QUESTIONS = [
    {
        "id": "q0",
        "question": "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "generator": "gen-model",
    },
    {"id": "q1", "question": "Caf\u00e9 prices: what is 2 + 2?", "generator": "gen-model"},  # non-ASCII: filtered
    {"id": "q2", "question": "What is the sum of 12 and 30?", "generator": "gen-model"},
    {"id": "q3", "question": "What is 6 times 7?", "generator": "gen-model", "difficulty": 0.75},
]


class Solver(Engine):
    def generate(self, prompts, params):
        results = []
        for prompt in prompts:
            text = prompt[-1]["content"]
            answer = "42" if "12 and 30" in text or "6 times" in text else "8"
            replies = [
                f"Step by step. \\boxed{{{answer}}}",
                "I am not sure.",
                f"Long reasoning here. The answer is {answer}.",
            ]
            results.append([Completion(r, 20, 10, "stop") for r in replies[: params.n]])
        return self._count(results)


class LengthScorer(Scorer):
    def score(self, conversations):
        self.tokens += len(conversations)
        return [float(len(chat[1]["content"])) for chat in conversations]

    def close(self) -> None:
        pass


class CannedResponses(GenerateResponses):
    def setup(self) -> None:
        self.engine, self.chat = Solver(), True


class CannedSelect(RewardSelect):
    def setup(self) -> None:
        self.scorer = LengthScorer()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir) -> Path:
    """A pipeline folder `pipe/` with three finished stages, run from its parent with relative paths."""
    root = tmp_path_factory.mktemp("export-pipeline")
    reward_model = build_tiny_model_dir(root / "reward-model", head="classifier")
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    before = os.getcwd()
    os.chdir(root)
    try:
        run_row_stage(
            FilterLanguage, FilterLanguageConfig(input="questions.jsonl", output="pipe/filter-language", progress=False)
        )
        run_row_stage(
            CannedResponses,
            GenerateResponsesConfig(
                input="pipe/filter-language",
                output="pipe/generate-responses",
                progress=False,
                shard_size=2,
                engine={"model": str(tiny_model_dir)},
                sampling={"n": 3},
            ),
        )
        run_row_stage(
            CannedSelect,
            RewardSelectConfig(
                input="pipe/generate-responses",
                output="pipe/reward-select",
                progress=False,
                reward={"model": str(reward_model)},
            ),
        )
    finally:
        os.chdir(before)
    return root / "pipe"


def export_config(pipeline: Path, output: Path, **overrides) -> ExportConfig:
    return ExportConfig(input=pipeline / "reward-select", output=output, progress=False, shard_size=1, **overrides)


@pytest.fixture(scope="module")
def exported(pipeline, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("exported") / "export"
    return output, run_row_stage(Export, export_config(pipeline, output))


def test_loads_with_datasets_as_parquet_json_and_folder(exported):
    from datasets import load_dataset

    output, manifest = exported
    parquet = load_dataset("parquet", data_files=str(output / "data" / "*.parquet"), split="train")
    jsonl = load_dataset("json", data_files=str(output / "shard-*.jsonl"), split="train")
    folder = load_dataset(str(output), split="train")
    columns = [
        "id",
        "query",
        "response",
        "question_id",
        "generator",
        "solver",
        "answer",
        "reward_score",
        "reward_model",
        "difficulty",
    ]
    assert parquet.column_names == columns == manifest["columns"]
    assert parquet.num_rows == jsonl.num_rows == folder.num_rows == manifest["rows"] == 3
    # q3, the first row with a difficulty, moves to the front of the first file, so the JSON loader (which
    # takes column types from the start of the first file) sees a float there, not only nulls.
    assert parquet["id"] == jsonl["id"] == ["q0", "q3", "q2"]
    assert parquet["difficulty"] == jsonl["difficulty"] == [None, 0.75, None]
    assert parquet["answer"] == ["8", "42", "42"]
    assert parquet["response"][0] == "Long reasoning here. The answer is 8."  # the longest (highest-scored) response
    assert parquet["reward_score"][0] == float(len(parquet["response"][0]))
    assert sorted(manifest["parquet_files"]) == [f"data/train-0000{i}-of-00002.parquet" for i in range(2)]


def test_card_has_front_matter_funnel_configs_and_samples(exported, pipeline):
    output, manifest = exported
    card = (output / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
    ]
    assert metadata["size_categories"] == ["n<1K"] and "math" in metadata["tags"]
    section = body.split("## How it was made")[1].split("\n## ")[0]
    funnel = {
        line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ") and "`" in line
    }
    assert list(funnel) == ["filter-language", "generate-responses", "reward-select", "export"]
    assert "| 4 | 3 | non_ascii: 1 |" in funnel["filter-language"]
    assert "| 3 questions | 6 responses | no_final_answer: 3 |" in funnel["generate-responses"]
    assert "| 6 responses | 3 questions | lower_reward: 3 |" in funnel["reward-select"]
    assert "| 3 | 3 |" in funnel["export"]
    configs = yaml.safe_load(body.split("## Pipeline configuration")[1].split("```yaml\n")[1].split("```")[0])
    assert [c["stage"] for c in configs] == ["filter-language", "generate-responses", "reward-select", "export"]
    assert configs[1]["config"]["sampling"]["n"] == 3
    assert "generate-responses (engine)" in body and "reward-select (reward)" in body
    assert body.count("```json") == 3 and '"query": "Tom has 3 apples' in body
    assert [Path(p).name for p in manifest["lineage"]] == ["filter-language", "generate-responses", "reward-select"]


def test_lineage_follows_relative_inputs_from_another_directory(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the manifests say "pipe/filter-language", relative to the pipeline's parent
    found = lineage(pipeline / "reward-select")
    assert [folder.name for folder, _ in found] == ["filter-language", "generate-responses", "reward-select"]
    assert [m["stage"] for _, m in found] == ["filter-language", "generate-responses", "reward-select"]


def test_explicit_stage_list(pipeline, tmp_path):
    manifest = run_row_stage(
        Export, export_config(pipeline, tmp_path / "export", stage_folders=[pipeline / "reward-select"], card_samples=0)
    )
    assert manifest["lineage"] == [str(pipeline / "reward-select")]
    assert "None." in (tmp_path / "export" / "README.md").read_text()


def test_unfinished_earlier_stage_is_named_before_any_output(pipeline, tmp_path):
    copy = tmp_path / "pipe"
    shutil.copytree(pipeline, copy)
    (copy / "filter-language" / "manifest.json").unlink()
    config = ExportConfig(input=copy / "reward-select", output=tmp_path / "export", progress=False)
    with pytest.raises(io.DataError, match="stage 'filter-language', which has not finished"):
        run_row_stage(Export, config)
    assert not (tmp_path / "export").exists()


def test_parquet_schema_is_promoted_across_shards(tmp_path):
    io.atomic_write_text(tmp_path / "shard-00000.jsonl", io.to_jsonl([{"id": "a", "score": None, "n": 1}]))
    io.atomic_write_text(tmp_path / "shard-00001.jsonl", io.to_jsonl([{"id": "b", "score": 0.5, "n": 2.5}]))
    files, rows = write_parquet(tmp_path, ["id", "score", "n"])
    import pyarrow.parquet as pq

    schemas = {str(pq.read_schema(path)) for path in files}
    assert rows == 2 and len(schemas) == 1 and "score: double" in schemas.pop()


def test_push_to_hub_uploads_card_and_parquet(exported, pipeline, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:  # records what would be sent; nothing leaves this machine
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    output, _ = exported
    config = export_config(pipeline, output, push_to_hub="me/data", private=True)
    # push_to_hub is a runtime field: the finished export is not redone, only uploaded.
    assert config.config_hash() == export_config(pipeline, output).config_hash()
    before = (output / "manifest.json").stat().st_mtime_ns
    run_row_stage(Export, config)
    assert (output / "manifest.json").stat().st_mtime_ns == before
    assert calls[0] == ("create_repo", "me/data", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_id"] == "me/data" and upload["repo_type"] == "dataset" and Path(upload["folder_path"]) == output
    assert upload["allow_patterns"] == ["README.md", "data/*.parquet"]
