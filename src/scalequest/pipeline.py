"""The whole method from one YAML: stages run in the paper's order, each reading earlier outputs.

    output_dir: runs/demo          # stage outputs default to OUTPUT_DIR/STAGE
    stages:                        # in pipeline order; each value is that stage's config
      generate-questions: {num: 64}
      filter-language: {}          # input: generate-questions' output, filled in by WIRING

Every stage is resumable and is skipped when it already finished with the same config and input.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from scalequest.config import ConfigError, Section, build_config, deep_merge, parse_overrides, read_yaml
from scalequest.stages import qft, qpo, sft
from scalequest.stages.decontaminate import Decontaminate, DecontaminateConfig
from scalequest.stages.difficulty import (
    DifficultyLabelConfig,
    DifficultyTrainConfig,
    FilterDifficulty,
    FilterDifficultyConfig,
    LabelDifficulty,
    train_regressor,
)
from scalequest.stages.evaluate import Evaluate, EvaluateConfig
from scalequest.stages.export import Export, ExportConfig
from scalequest.stages.filters import FilterLanguage, FilterLanguageConfig
from scalequest.stages.generate import GenerateQuestions, GenerateQuestionsConfig
from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig
from scalequest.stages.responses import GenerateResponses, GenerateResponsesConfig
from scalequest.stages.reward import RewardSelect, RewardSelectConfig
from scalequest.stages.solvability import FilterSolvability, FilterSolvabilityConfig

log = logging.getLogger("scalequest")

# Stage name -> (config model, function running it to completion), in pipeline order.
STAGES = {
    "qft": (qft.QFTConfig, qft.run),
    "qpo-data": (QPODataConfig, BuildQPOData.run),
    "qpo": (qpo.QPOConfig, qpo.run),
    "generate-questions": (GenerateQuestionsConfig, GenerateQuestions.run),
    "filter-language": (FilterLanguageConfig, FilterLanguage.run),
    "filter-solvability": (FilterSolvabilityConfig, FilterSolvability.run),
    "difficulty-label": (DifficultyLabelConfig, LabelDifficulty.run),
    "difficulty-train": (DifficultyTrainConfig, train_regressor),
    "filter-difficulty": (FilterDifficultyConfig, FilterDifficulty.run),
    "generate-responses": (GenerateResponsesConfig, GenerateResponses.run),
    "reward-select": (RewardSelectConfig, RewardSelect.run),
    "decontaminate": (DecontaminateConfig, Decontaminate.run),
    "export": (ExportConfig, Export.run),
    "sft": (sft.SFTStageConfig, sft.run),
    "evaluate": (EvaluateConfig, Evaluate.run),
}

QUESTIONS = ("filter-difficulty", "filter-solvability", "filter-language", "generate-questions")

# Config fields a pipeline fills from earlier stages' outputs when its YAML leaves them unset:
# field -> stages whose output can feed it, in order of preference (the first present in the pipeline wins).
WIRING: dict[str, dict[str, tuple[str, ...]]] = {
    "qpo-data": {"generator.model": ("qft",)},
    "qpo": {"input": ("qpo-data",), "model": ("qft",)},
    "generate-questions": {"engine.model": ("qpo", "qft")},
    "filter-language": {"input": ("generate-questions",)},
    "filter-solvability": {"input": ("filter-language", "generate-questions")},
    "difficulty-train": {"input": ("difficulty-label",)},
    "filter-difficulty": {"input": QUESTIONS[1:], "regressor": ("difficulty-train",)},
    "generate-responses": {"input": QUESTIONS},
    "reward-select": {"input": ("generate-responses",)},
    "decontaminate": {"input": ("reward-select", "generate-responses")},
    "export": {"input": ("decontaminate", "reward-select", "generate-responses")},
    "sft": {"input": ("export",)},
    "evaluate": {"engine.model": ("sft",)},
}


def fill_from_earlier(name: str, values: dict[str, Any], outputs: dict[str, Path]) -> dict[str, Any]:
    for field, sources in WIRING.get(name, {}).items():
        present = [outputs[source] for source in sources if source in outputs]
        if not present:
            continue
        node = values
        *parents, leaf = field.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node.setdefault(leaf, str(present[0]))
    return values


class PipelineConfig(Section):
    output_dir: Path = Field(..., description="Folder holding one sub-folder per stage.")
    stages: dict[str, dict[str, Any] | None] = Field(..., description="Stage name -> that stage's config, in pipeline order.")


def run_one(name: str, config, force: bool = False) -> dict:
    _, run = STAGES[name]
    return run(config, force=force)


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> tuple[PipelineConfig, list[tuple[str, Any]]]:
    """Validate a pipeline YAML; `stage.key=value` overrides go to that stage, other keys to the top."""
    data = read_yaml(path)
    for key, value in parse_overrides(list(overrides)).items():
        if key in STAGES:
            data.setdefault("stages", {})
            data["stages"][key] = deep_merge(data["stages"].get(key) or {}, value)
        else:
            data[key] = value
    pipeline = build_config(PipelineConfig, data, str(path))
    names = list(pipeline.stages)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"{path}: unknown stage {unknown[0]!r}; valid stages in order: {', '.join(STAGES)}")
    order = [n for n in STAGES if n in names]
    if names != order:
        raise ConfigError(f"{path}: stages out of order ({', '.join(names)}); the order is: {', '.join(STAGES)}")
    stages = []
    outputs: dict[str, Path] = {}
    for name in names:
        config_class, _ = STAGES[name]
        values = copy.deepcopy(pipeline.stages[name] or {})
        values.setdefault("output", str(pipeline.output_dir / name))
        config = build_config(config_class, fill_from_earlier(name, values, outputs), f"{path}: stages.{name}")
        stages.append((name, config))
        outputs[name] = config.output
    return pipeline, stages


def run_pipeline(path: str | Path, overrides: list[str] = (), force: bool = False) -> list[tuple[str, dict]]:
    """Run every stage in order; return (stage, manifest) pairs."""
    _, stages = load_pipeline(path, overrides)
    results = []
    for name, config in stages:
        log.info("stage %s -> %s", name, config.output)
        results.append((name, run_one(name, config, force=force)))
    return results
