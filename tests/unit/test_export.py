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
from scalequest.stages.export import (
    PIPELINE_ORDER,
    Export,
    ExportConfig,
    dataset_license,
    license_of,
    lineage,
    pipeline_yaml,
    used,
    write_parquet,
)
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
    assert metadata["annotations_creators"] == metadata["language_creators"] == ["machine-generated"]
    assert metadata["task_categories"] == ["question-answering", "text-generation"]
    # The tiny models and questions.jsonl have no license anyone knows, so the dataset's is `other`.
    assert metadata["license"] == "other" and metadata["source_datasets"] == ["original"]
    assert "| model | `" in body and "| generate-responses (engine) | unknown |" in body
    section = body.split("## How it was made")[1].split("\n## ")[0]
    funnel = {
        line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ") and "`" in line
    }
    assert list(funnel) == ["filter-language", "generate-responses", "reward-select", "export"]
    assert "| 4 | 3 | non_ascii: 1 |" in funnel["filter-language"]
    assert "| 3 questions | 6 responses | no_final_answer: 3 |" in funnel["generate-responses"]
    assert "| 6 responses | 3 questions | lower_reward: 3 |" in funnel["reward-select"]
    assert "| 3 | 3 |" in funnel["export"]
    method = [line for line in section.splitlines() if line[:1].isdigit()]
    assert [line.split("(`")[1].split("`)")[0] for line in method] == list(funnel)
    assert "best one per question was kept" in method[2] and "No reward model selected" not in body
    assert "| filter-language: removed | 1 of 4 (25.0%) | 20.1% |" in body  # the figures, beside the paper's
    shown = yaml.safe_load(body.split("## Reproducing")[1].split("```yaml\n")[1].split("```")[0])
    assert shown == yaml.safe_load((output / "pipeline.yaml").read_text())
    assert list(shown["stages"]) == ["filter-language", "generate-responses", "reward-select", "export"]
    assert shown["stages"]["generate-responses"]["sampling"]["n"] == 3
    assert "generate-responses (engine)" in body and "reward-select (reward)" in body
    assert body.count("```json") == 3 and '"query": "Tom has 3 apples' in body
    assert [Path(p).name for p in manifest["lineage"]] == ["filter-language", "generate-responses", "reward-select"]


def test_lineage_follows_relative_inputs_from_another_directory(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the manifests say "pipe/filter-language", relative to the pipeline's parent
    found = lineage(pipeline / "reward-select")
    assert [folder.name for folder, _ in found] == ["filter-language", "generate-responses", "reward-select"]
    assert [m["stage"] for _, m in found] == ["filter-language", "generate-responses", "reward-select"]


def test_explicit_stage_list_and_license(pipeline, tmp_path):
    config = export_config(
        pipeline, tmp_path / "export", stage_folders=[pipeline / "reward-select"], card_samples=0, license="cc-by-4.0"
    )
    manifest = run_row_stage(Export, config)
    assert manifest["lineage"] == [str(pipeline / "reward-select")]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "## Sample rows\n\nNone." in card
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "cc-by-4.0" and "as chosen by whoever ran" in card
    stages = yaml.safe_load((tmp_path / "export" / "pipeline.yaml").read_text())["stages"]
    assert list(stages) == ["reward-select", "export"]
    assert stages["export"]["input"] == "${stages.reward-select.output}"


def test_card_describes_only_the_stages_that_ran(pipeline, tmp_path):
    # No reward-select: the card must not say a reward model chose the answers.
    config = ExportConfig(input=pipeline / "generate-responses", output=tmp_path / "export", progress=False)
    run_row_stage(Export, config)
    card = (tmp_path / "export" / "README.md").read_text()
    section = card.split("## How it was made")[1].split("\n## ")[0]
    method = [line for line in section.splitlines() if line[:1].isdigit()]
    assert [line.split("(`")[1].split("`)")[0] for line in method] == [
        "filter-language",
        "generate-responses",
        "export",
    ]
    assert "reward-select" not in card and "Reward selection" not in card and "best one per question" not in card
    assert "No reward model selected among the responses: a question can appear with up to 3 responses" in section


def test_pipeline_yaml_beside_the_data_reruns_the_same_stages(exported, pipeline, monkeypatch, capsys):
    from scalequest.cli import main
    from scalequest.pipeline import plan_pipeline

    output, _ = exported
    path = output / "pipeline.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["output_dir"] == "pipe"  # the folder the pipeline wrote its stages to (relative, as it ran)
    assert saved["stages"]["reward-select"]["input"] == "${stages.generate-responses.output}"
    assert "output" not in saved["stages"]["reward-select"] and saved["stages"]["export"]["output"] == str(output)
    monkeypatch.chdir(pipeline.parent)  # the directory the stages ran from
    assert main(["run", "--plan", "-c", str(path)]) == 0
    plan = capsys.readouterr().out
    assert plan.count("(finished)") == 4 and "4. export" in plan
    _, planned = plan_pipeline(path)
    assert [name for name, _, _ in planned] == ["filter-language", "generate-responses", "reward-select", "export"]
    for name, config, _ in planned[:-1]:  # exactly the configs that ran: a rerun skips them
        assert config.config_hash() == io.read_manifest(pipeline / name)["config_hash"]
        assert config.output == Path("pipe") / name
    assert planned[-1][1].input.path.resolve() == (pipeline / "reward-select").resolve()


def test_pipeline_yaml_round_trips_every_stage_of_the_paper_recipe(tmp_path):
    # Every command (both generators' tagged chains, merge, sft, evaluate): configs as the stages save them,
    # written back as a pipeline YAML, load to the same configs in the same folders.
    from scalequest.pipeline import STAGES, plan_pipeline

    assert tuple(STAGES) == PIPELINE_ORDER
    _, planned = plan_pipeline(Path(__file__).resolve().parents[2] / "configs" / "paper" / "scalequest-math.yaml")
    steps = [(type(config).stage, config.output, config.model_dump(mode="json")) for _, config, _ in planned]
    shuffled = sorted(steps, key=lambda step: -PIPELINE_ORDER.index(step[0]))  # a command's own steps keep order
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline_yaml(shuffled), sort_keys=False))
    _, again = plan_pipeline(tmp_path / "pipeline.yaml")
    assert [name for name, _, _ in again] == [name for name, _, _ in planned]
    for (_, before, _), (_, after, _) in zip(planned, again):
        assert after.config_hash() == before.config_hash() and after.output == before.output
    saved = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())["stages"]
    assert saved["merge"]["inputs"] == [
        "${stages.generate-questions.output}",
        "${stages.generate-questions@deepseek.output}",
    ]


def test_licenses_of_the_models_and_data_used(tmp_path):
    def stage(name: str, config: dict) -> tuple[Path, dict]:
        models = {"model": {"model": config["model"], "revision": None, "commit": None}} if "model" in config else {}
        if "engine" in config:
            models["engine.model"] = {"model": config["engine"]["model"], "revision": None, "commit": None}
        return tmp_path / name, {"stage": name, "config": config, "models": models}

    demo = [
        stage("qft", {"model": "embedded", "sources": [{"hub": "openai/gsm8k", "config": "main"}]}),
        stage(
            "difficulty-label", {"input": {"hub": "openai/gsm8k", "config": "main"}, "engine": {"model": "embedded"}}
        ),
    ]
    uses = used(demo)
    assert [(u["kind"], u["name"], u["license"]) for u in uses] == [
        ("model", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
        ("dataset", "openai/gsm8k", "mit"),
    ]
    assert uses[0]["used_by"] == ["qft (trained from)", "difficulty-label (engine)"]
    assert dataset_license(uses) == "apache-2.0"  # Apache-2.0 models on MIT data
    assert dataset_license(used(demo[1:2])[1:]) == "mit"
    paper = demo + [stage("generate-questions", {"engine": {"model": "deepseek-ai/deepseek-math-7b-rl"}})]
    assert used(paper)[-1]["license"] == "other" and dataset_license(used(paper)) == "other"  # the DeepSeek License
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\n---\n# a downloaded model\n")
    assert license_of(str(local), "model") == ("mit", None)
    assert license_of("someone/not-in-the-cache", "model") == ("unknown", None)  # offline: never asks the Hub


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
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # huggingface_hub finds a token; the fake API never sends it
    output, _ = exported
    config = export_config(pipeline, output, push_to_hub="me/data", private=True)
    # push_to_hub is a runtime field: the finished export is not redone, only uploaded.
    assert config.config_hash() == export_config(pipeline, output).config_hash()
    before = (output / "manifest.json").stat().st_mtime_ns
    from scalequest.report import REPORT_DIR, write_report
    from scalequest.stages.export import REPORT_DIR as PUSHED_REPORT_DIR

    assert REPORT_DIR == PUSHED_REPORT_DIR
    write_report(pipeline, output / REPORT_DIR)  # the run's figures, pushed beside the data
    run_row_stage(Export, config)
    assert (output / "manifest.json").stat().st_mtime_ns == before
    assert calls[0] == ("create_repo", "me/data", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_id"] == "me/data" and upload["repo_type"] == "dataset" and Path(upload["folder_path"]) == output
    assert upload["allow_patterns"] == ["README.md", "pipeline.yaml", "data/*.parquet", "report/*.png"]


def test_push_to_hub_without_a_token_fails_before_any_output(pipeline, tmp_path, monkeypatch):
    import huggingface_hub

    from scalequest.config import ConfigError

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no HF_TOKEN and no stored login
    with pytest.raises(ConfigError, match="set HF_TOKEN"):
        run_row_stage(Export, export_config(pipeline, tmp_path / "export", push_to_hub="me/data"))
    assert not (tmp_path / "export").exists()
