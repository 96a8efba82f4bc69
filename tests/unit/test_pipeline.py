"""The one declaration of every stage (scalequest.pipeline.STAGES) and what reads it: the CLI, `run --plan`,
`${stages.NAME.output}` references in a pipeline YAML, and the cost table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalequest import cost
from scalequest.cli import build_parser, main
from scalequest.config import ConfigError, StageConfig, section_types
from scalequest.pipeline import STAGES, load_pipeline


def write_pipeline(path: Path, stages: dict) -> Path:
    path.write_text(json.dumps({"output_dir": str(path.parent / "run"), "stages": stages}))
    return path


def test_every_stage_is_declared_with_its_command_config_kind_and_phase():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, stage in STAGES.items():
        assert stage.name == name and stage.config.stage == name and issubclass(stage.config, StageConfig)
        assert name in commands  # the CLI offers every declared stage
        assert stage.kind in ("row-wise", "training") and stage.phase
        earlier = list(STAGES)[: list(STAGES).index(name)]
        for field, sources in stage.feeds.items():
            assert set(sources) <= set(earlier), f"{name}.{field} is fed by a later stage"
            node = stage.config
            *parents, leaf = field.split(".")
            for part in parents:  # every fed field exists in the config
                node = section_types(node.model_fields[part].annotation)[0]
            assert leaf in node.model_fields
    # The cost table's phases come from the declaration, in pipeline order.
    phases = [stage.phase for stage in STAGES.values()]
    assert phases[0] == "Question fine-tuning (QFT)" and phases[-1] == "Evaluation"


def test_a_stage_output_can_be_named_explicitly(tmp_path):
    path = write_pipeline(
        tmp_path / "p.yaml",
        {
            "generate-questions": {"num": 4},
            "filter-language": {},
            "generate-responses": {"input": "${stages.generate-questions.output}"},  # skips the filter on purpose
        },
    )
    stages = dict(load_pipeline(path)[1])
    assert stages["generate-responses"].input.path == stages["generate-questions"].output
    assert stages["filter-language"].input.path == stages["generate-questions"].output  # the feeds default


def test_a_reference_to_a_stage_not_earlier_in_the_pipeline_is_an_error(tmp_path):
    path = write_pipeline(
        tmp_path / "p.yaml",
        {
            "generate-questions": {"num": 4},
            "filter-language": {"input": "${stages.generate-responses.output}"},
        },
    )
    with pytest.raises(
        ConfigError,
        match=r"stages.filter-language: \$\{stages.generate-responses.output\} names no "
        r"earlier stage of this pipeline \(earlier: generate-questions\)",
    ):
        load_pipeline(path)


def test_run_plan_prints_inputs_models_and_outputs_and_runs_nothing(tmp_path, capsys):
    path = write_pipeline(
        tmp_path / "p.yaml",
        {
            "qft": {"sources": [{"bundled": "arithmetic_train"}]},
            "generate-questions": {"num": 4, "engine": {"revision": "v1"}},
            "filter-language": {},
            "evaluate": {"benchmarks": ["gsm8k"]},
        },
    )
    assert main(["run", "--plan", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "1. qft (training; Question fine-tuning (QFT))" in out and "sources: bundled:arithmetic_train" in out
    assert f"engine.model: {run / 'qft'} @ v1  <- qft" in out  # wired, and shown as wired
    assert f"input: {run / 'generate-questions'}  <- generate-questions" in out
    assert f"output: {run / 'evaluate'}" in out and "4. evaluate" in out
    assert not run.exists()


def test_two_generators_in_one_pipeline_and_their_merge(tmp_path, capsys):
    """COMMAND@TAG is a further step of one command: the paper's two generators, merged, in one pipeline."""
    path = write_pipeline(
        tmp_path / "p.yaml",
        {
            "qft": {"sources": [{"bundled": "arithmetic_train"}]},
            "generate-questions": {"num": 4, "engine": {"model": "org/generator-a"}},
            "generate-questions@b": {"num": 4, "engine": {"model": "${stages.qft.output}"}},
            "merge": {"inputs": ["${stages.generate-questions.output}", "${stages.generate-questions@b.output}"]},
            "filter-language": {},
        },
    )
    assert main(["run", "--plan", "-c", str(path), "generate-questions@b.num=6"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "2. generate-questions (row-wise; Question generation)" in out
    assert "3. generate-questions@b (row-wise; Question generation)" in out
    assert f"engine.model: {run / 'qft'}" in out and "engine.model: org/generator-a" in out
    assert f"inputs[0]: {run / 'generate-questions'}  <- generate-questions" in out
    assert f"inputs[1]: {run / 'generate-questions@b'}  <- generate-questions@b" in out
    assert f"input: {run / 'merge'}  <- merge" in out
    _, planned = load_pipeline(path, ["generate-questions@b.num=6"])
    assert [(name, getattr(config, "num", None)) for name, config in planned][1:3] == [
        ("generate-questions", 4),
        ("generate-questions@b", 6),
    ]


def test_a_step_of_an_unknown_command_or_out_of_order_is_an_error(tmp_path):
    bad = write_pipeline(tmp_path / "a.yaml", {"generate-questions@b": {}, "qft": {}})
    with pytest.raises(ConfigError, match="out of order"):
        load_pipeline(bad)
    unknown = write_pipeline(tmp_path / "b.yaml", {"no-such@b": {}})
    with pytest.raises(ConfigError, match="unknown stage 'no-such@b'"):
        load_pipeline(unknown)


def test_a_declared_flag_is_a_shortcut_for_its_field(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        "scalequest.pipeline.run_one", lambda name, config, force=False: seen.setdefault("c", config) and {}
    )
    parser_help = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "--limit" in parser_help
    main(["evaluate", f"output={tmp_path / 'e'}", "--limit", "3"])
    assert seen["c"].limit == 3


def test_cost_rows_follow_the_declared_phases(tmp_path):
    for name, seconds in (("generate-questions", 3600), ("filter-language", 1800)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(
            json.dumps(
                {
                    "stage": name,
                    "rows_out": 10,
                    "gpu_hours": seconds / 3600,
                    "wall_seconds": seconds,
                    "devices": ["gpu"],
                }
            )
        )
    rows = cost.cost_rows(tmp_path, 2.0)
    assert [row["phase"] for row in rows] == ["Question generation", "Question filtering", "Total"]
    assert rows[-1]["cost"] == pytest.approx(3.0)


def test_the_pipeline_domain_fills_every_stage_that_has_one(tmp_path):
    from importlib import resources

    with resources.as_file(resources.files("scalequest") / "configs" / "demo-code.yaml") as demo:
        _, stages = load_pipeline(demo)
    stages = dict(stages)
    assert stages["qpo-data"].domain == "code" and stages["generate-responses"].domain == "code"
    assert stages["evaluate"].benchmarks == ["humaneval"] and stages["difficulty-label"].gold_format == "tests"
    assert not hasattr(stages["export"], "domain")
    # A stage's own setting wins over the pipeline's.
    path = tmp_path / "p.yaml"
    path.write_text(
        json.dumps({"output_dir": str(tmp_path / "run"), "domain": "code", "stages": {"evaluate": {"domain": "math"}}})
    )
    ((_, evaluate),) = load_pipeline(path)[1]
    assert evaluate.domain == "math" and "humaneval" not in evaluate.benchmarks
    path.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "domain": "code", "stages": {"evaluate": {}}}))
    assert load_pipeline(path)[1][0][1].benchmarks == ["humaneval", "mbpp"]


def test_the_paper_code_recipe_plans():
    path = Path(__file__).resolve().parents[2] / "configs" / "paper-code" / "scalequest-code.yaml"
    pipeline, stages = load_pipeline(path)
    stages = dict(stages)
    assert pipeline.domain == "code"
    assert stages["generate-responses"].execute and stages["generate-responses"].domain == "code"
    assert stages["difficulty-label"].gold_format == "tests"
    assert stages["evaluate"].benchmarks == ["humaneval", "mbpp"]
    assert stages["decontaminate"].benchmarks == ["humaneval", "mbpp"]


def test_the_stages_that_grow_with_the_dataset_follow_from_the_declared_inputs():
    from scalequest.pipeline import grows_with_dataset

    grows = [name for name in STAGES if grows_with_dataset(name)]
    assert grows == [
        "generate-questions",
        "merge",
        "filter-language",
        "filter-solvability",
        "filter-difficulty",
        "generate-responses",
        "reward-select",
        "decontaminate",
        "export",
        "sft",
    ]
