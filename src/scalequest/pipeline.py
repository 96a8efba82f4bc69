"""The whole method from one YAML: stages run in the paper's order, each reading earlier outputs.

    output_dir: runs/demo          # stage outputs default to OUTPUT_DIR/STAGE
    stages:                        # in pipeline order; each value is that stage's config
      generate-questions: {num: 64}
      filter-language: {}          # input: generate-questions' output, filled in from the stage's `feeds`
      generate-responses: {input: "${stages.filter-language.output}"}   # or named explicitly

Every stage is declared once, in `STAGES` below: its command, config, kind, cost-table phase and which earlier
outputs feed which of its fields. The CLI, `run`, `run --plan` and `scalequest cost` read that declaration;
adding a stage means writing its module and one `Stage(...)` line. Every stage is resumable and is skipped
when it already finished with the same config and input.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from scalequest import progress
from scalequest.runner import run_row_stage
from scalequest.stage import RowStage
from scalequest.config import ConfigError, Section, StageConfig, build_config, deep_merge, parse_overrides, read_yaml
from scalequest.hub import require_token
from scalequest.stages import qft, qpo, reward_train, sft
from scalequest.stages.decontaminate import Decontaminate, DecontaminateConfig
from scalequest.stages.difficulty_label import DifficultyLabelConfig, LabelDifficulty
from scalequest.stages.difficulty_train import DifficultyTrainConfig, train_regressor
from scalequest.stages.filter_difficulty import FilterDifficulty, FilterDifficultyConfig
from scalequest.stages.evaluate import Evaluate, EvaluateConfig
from scalequest.stages.export import Export, ExportConfig
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig
from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig
from scalequest.stages.merge import Merge, MergeConfig
from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig
from scalequest.stages.generate_responses import GenerateResponses, GenerateResponsesConfig
from scalequest.stages.reward_select import RewardSelect, RewardSelectConfig
from scalequest.stages.filter_solvability import FilterSolvability, FilterSolvabilityConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """Everything the CLI, `run`, `run --plan` and the cost table know about a stage, declared once."""

    name: str  # the command, and the stage's output sub-folder in a pipeline
    config: type[StageConfig]
    runs: type[RowStage] | Callable[..., dict]  # a row-wise stage's class, or a training stage's run(config, force)
    kind: Literal["row-wise", "training"]
    phase: str  # row of the paper's Table 4 (scalequest cost)
    # Config fields a pipeline fills from earlier stages' outputs when its YAML leaves them unset:
    # field -> stages whose output can feed it, in order of preference (the first present in the pipeline wins).
    feeds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    writes_questions: bool = False  # its output rows are questions (the demo samples the last such stage)
    # Its rows start the dataset, so its work grows with the dataset's size, as does every stage its output feeds
    # (`grows_with_dataset`; `scalequest estimate` scales them).
    scales: bool = False
    flags: tuple[str, ...] = ()  # config fields also offered as --FLAG on the command line

    def run(self, config: StageConfig, force: bool = False) -> dict:
        """Run the stage to completion (finished work is skipped) and return its manifest."""
        if self.kind == "row-wise":
            return run_row_stage(self.runs, config, force=force)
        return self.runs(config, force=force)


QUESTION_STAGES = ("filter-difficulty", "filter-solvability", "filter-language", "merge", "generate-questions")
QPO, FILTERING = "Question preference optimization (QPO)", "Question filtering"

# Every stage, in pipeline order.
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage("qft", qft.QFTConfig, qft.run, "training", "Question fine-tuning (QFT)"),
        Stage("qpo-data", QPODataConfig, BuildQPOData, "row-wise", QPO, {"generator.model": ("qft",)}),
        Stage("qpo", qpo.QPOConfig, qpo.run, "training", QPO, {"input": ("qpo-data",), "model": ("qft",)}),
        Stage(
            "generate-questions",
            GenerateQuestionsConfig,
            GenerateQuestions,
            "row-wise",
            "Question generation",
            {"engine.model": ("qpo", "qft")},
            writes_questions=True,
            scales=True,
        ),
        # Its `inputs` are named in the YAML (e.g. "${stages.generate-questions.output}" and another generator's run).
        Stage("merge", MergeConfig, Merge, "row-wise", "Question generation", writes_questions=True, scales=True),
        Stage(
            "filter-language",
            FilterLanguageConfig,
            FilterLanguage,
            "row-wise",
            FILTERING,
            {"input": QUESTION_STAGES[3:]},
            writes_questions=True,
        ),
        Stage(
            "filter-solvability",
            FilterSolvabilityConfig,
            FilterSolvability,
            "row-wise",
            FILTERING,
            {"input": QUESTION_STAGES[2:]},
            writes_questions=True,
        ),
        Stage("difficulty-label", DifficultyLabelConfig, LabelDifficulty, "row-wise", FILTERING),
        Stage(
            "difficulty-train",
            DifficultyTrainConfig,
            train_regressor,
            "training",
            FILTERING,
            {"input": ("difficulty-label",)},
        ),
        Stage(
            "filter-difficulty",
            FilterDifficultyConfig,
            FilterDifficulty,
            "row-wise",
            FILTERING,
            {"input": QUESTION_STAGES[1:], "regressor.model": ("difficulty-train",)},
            writes_questions=True,
        ),
        Stage(
            "generate-responses",
            GenerateResponsesConfig,
            GenerateResponses,
            "row-wise",
            "Response generation",
            {"input": QUESTION_STAGES},
        ),
        Stage(
            "reward-train",
            reward_train.RewardTrainConfig,
            reward_train.run,
            "training",
            "Reward scoring",
            {"input": ("difficulty-label",)},
        ),
        Stage(
            "reward-select",
            RewardSelectConfig,
            RewardSelect,
            "row-wise",
            "Reward scoring",
            {"input": ("generate-responses",), "reward.model": ("reward-train",)},
        ),
        Stage(
            "decontaminate",
            DecontaminateConfig,
            Decontaminate,
            "row-wise",
            "Decontamination and export",
            {"input": ("reward-select", "generate-responses")},
        ),
        Stage(
            "export",
            ExportConfig,
            Export,
            "row-wise",
            "Decontamination and export",
            {"input": ("decontaminate", "reward-select", "generate-responses")},
        ),
        Stage("sft", sft.SFTStageConfig, sft.run, "training", "Fine-tuning (SFT)", {"input": ("export",)}),
        Stage(
            "evaluate",
            EvaluateConfig,
            Evaluate,
            "row-wise",
            "Evaluation",
            {"engine.model": ("sft",)},
            flags=("limit",),
        ),
    ]
}


def grows_with_dataset(name: str) -> bool:
    """Whether a stage's work grows with the final dataset: it starts the dataset, or its input is fed by a stage
    whose work does (filters, responses, reward, export and SFT do; QFT, QPO, labelling and evaluation do not)."""
    stage = STAGES[name]
    return stage.scales or any(grows_with_dataset(source) for source in stage.feeds.get("input", ()))


# `${stages.NAME.output}` in a pipeline YAML: another (earlier) stage's output folder.
REFERENCE = re.compile(r"\$\{stages\.([a-z0-9@_-]+)\.output\}")


def command_of(name: str) -> str:
    """The command a pipeline step runs: a step is a command, or COMMAND@TAG for a further instance of it
    (`generate-questions@qft` beside `generate-questions`: the paper's two generators in one pipeline)."""
    return name.split("@", 1)[0]


def fill_from_earlier(
    name: str, values: dict[str, Any], outputs: dict[str, Path]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill unset fields from earlier stages' outputs; return the values and {field: feeding step}. Of several
    steps of one command, the one with this step's tag feeds (`qpo@b` reads `qft@b`, `qpo` reads `qft`), else the
    latest."""
    tag = name.partition("@")[2]
    latest = {command_of(step): step for step in outputs}
    wired = {}
    for field_name, sources in STAGES[command_of(name)].feeds.items():
        present = [f"{s}@{tag}" if tag else s for s in sources if (f"{s}@{tag}" if tag else s) in outputs]
        present = present or [latest[source] for source in sources if source in latest]
        if not present:
            continue
        node = values
        *parents, leaf = field_name.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        # A section the user wrote as a plain string (`regressor: runs/reg`) names its model already.
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = str(outputs[present[0]])
            wired[field_name] = present[0]
    return values, wired


def resolve_references(value: Any, outputs: dict[str, Path], where: str) -> Any:
    """Replace `${stages.NAME.output}` in every string of a stage's values with that stage's output folder."""
    if isinstance(value, dict):
        return {key: resolve_references(item, outputs, where) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_references(item, outputs, where) for item in value]
    if not isinstance(value, str):
        return value

    def output_of(match: re.Match) -> str:
        if match.group(1) not in outputs:
            raise ConfigError(
                f"{where}: {match.group(0)} names no earlier stage of this pipeline "
                f"(earlier: {', '.join(outputs) or 'none'})"
            )
        return str(outputs[match.group(1)])

    return REFERENCE.sub(output_of, value)


class PipelineConfig(Section):
    output_dir: Path = Field(..., description="Folder holding one sub-folder per stage.")
    stages: dict[str, dict[str, Any] | None] = Field(
        ...,
        description="Stage name -> that stage's config, in pipeline order; ${stages.NAME.output} names an earlier "
        "stage's output.",
    )
    domain: Literal["math", "code"] | None = Field(
        None,
        description="math or code for every stage that has a `domain` field and does not set it (the prompts, "
        "checks and benchmarks of that domain).",
    )


def run_one(name: str, config, force: bool = False) -> dict:
    return STAGES[command_of(name)].run(config, force=force)


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> tuple[PipelineConfig, list[tuple[str, Any]]]:
    """Validate a pipeline YAML; `stage.key=value` overrides go to that stage, other keys to the top.
    Returns the pipeline and its (stage name, config) pairs in order."""
    pipeline, planned = plan_pipeline(path, overrides)
    return pipeline, [(name, config) for name, config, _ in planned]


def plan_pipeline(path: str | Path, overrides: list[str] = ()) -> tuple[PipelineConfig, list[tuple[str, Any, dict]]]:
    """As `load_pipeline`, with each stage's wired fields ({field: earlier stage that feeds it})."""
    data = read_yaml(path)
    for key, value in parse_overrides(list(overrides)).items():
        if command_of(key) in STAGES:
            data.setdefault("stages", {})
            data["stages"][key] = deep_merge(data["stages"].get(key) or {}, value)
        else:
            data[key] = value
    pipeline = build_config(PipelineConfig, data, str(path))
    names = list(pipeline.stages)
    unknown = [n for n in names if command_of(n) not in STAGES]
    if unknown:
        raise ConfigError(f"{path}: unknown stage {unknown[0]!r}; valid stages in order: {', '.join(STAGES)}")
    position = {command: index for index, command in enumerate(STAGES)}
    if names != sorted(names, key=lambda n: position[command_of(n)]):  # several steps of one command: YAML order
        raise ConfigError(f"{path}: stages out of order ({', '.join(names)}); the order is: {', '.join(STAGES)}")
    stages = []
    outputs: dict[str, Path] = {}
    for name in names:
        where = f"{path}: stages.{name}"
        values = resolve_references(copy.deepcopy(pipeline.stages[name] or {}), outputs, where)
        values.setdefault("output", str(pipeline.output_dir / name))
        if pipeline.domain is not None and "domain" in STAGES[command_of(name)].config.model_fields:
            values.setdefault("domain", pipeline.domain)
        values, wired = fill_from_earlier(name, values, outputs)
        config = build_config(STAGES[command_of(name)].config, values, where)
        stages.append((name, config, wired))
        outputs[name] = config.output
    return pipeline, stages


def describe_plan(path: str | Path, overrides: list[str] = ()) -> str:
    """What `run` would do, stage by stage, without running anything: inputs (and which earlier stage feeds
    them), models, output, and whether the stage already finished."""
    from scalequest.models import model_provenance

    _, planned = plan_pipeline(path, overrides)
    lines = []
    for number, (name, config, wired) in enumerate(planned, start=1):
        stage = STAGES[command_of(name)]
        lines.append(f"{number}. {name} ({stage.kind}; {stage.phase})")
        inputs = [("input", config.input)] if "input" in type(config).model_fields else []
        inputs += [("sources", ", ".join(map(str, config.sources)))] if stage.name == "qft" else []
        for label, value in inputs:
            lines.append(f"     {label}: {value}" + (f"  <- {wired[label]}" if label in wired else ""))
        for index, more in enumerate(getattr(config, "more_sources", None) or []):  # difficulty-label
            lines.append(f"     more_sources[{index}]: {more.input}")
        for index, source in enumerate(getattr(config, "inputs", None) or []):  # merge
            earlier = [n for n, c, _ in planned[: number - 1] if source.path is not None and source.path == c.output]
            lines.append(f"     inputs[{index}]: {source}" + (f"  <- {earlier[0]}" if earlier else ""))
        for field_name, model in model_provenance(config, commits=False).items():
            revision = f" @ {model['revision']}" if model["revision"] else ""
            lines.append(
                f"     {field_name}: {model['model']}{revision}"
                + (f"  <- {wired[field_name]}" if field_name in wired else "")
            )
        done = " (finished)" if (Path(config.output) / "manifest.json").is_file() else ""
        lines.append(f"     output: {config.output}{done}")
    return "\n".join(lines)


def run_pipeline(path: str | Path, overrides: list[str] = (), force: bool = False) -> list[tuple[str, dict]]:
    """Run every stage in order; return (stage, manifest) pairs."""
    _, stages = load_pipeline(path, overrides)
    for _, config in stages:  # a stage that pushes to the Hub without a token fails before the first one runs
        if getattr(config, "push_to_hub", None):
            require_token(config.push_to_hub)
    results = []
    for number, (name, config) in enumerate(stages, start=1):
        log.info("stage %d/%d: %s -> %s", number, len(stages), name, config.output)
        with progress.pipeline_step(number, len(stages), name):  # the progress view shows [number/N] name
            results.append((name, run_one(name, config, force=force)))
    return results
