"""Export: the final dataset as a Hugging Face dataset folder (Parquet + JSONL) with a dataset card.

    OUTPUT/
      README.md                        dataset card (huggingface_hub DatasetCard, template cards/dataset_card.md):
                                       the Hub's YAML metadata (license, source datasets, creators, tasks, size,
                                       data files), the stages that ran, the funnel and figures, the models and
                                       data used with their licenses, the pipeline and sample rows
      pipeline.yaml                    the pipeline that made it: `scalequest run -c OUTPUT/pipeline.yaml`
      data/train-00000-of-0000N.parquet
      shard-00000.jsonl ...            the same rows as JSONL (also this stage's resumable shards)
      config.yaml, manifest.json, .stats/

Columns: `id`, `query`, `response`, then the provenance columns the rows have (question_id, generator,
solver, answer, reward_score, reward_model, difficulty, ...).

Finding the earlier stages: every stage writes its resolved config (config.yaml) and, when finished, a
manifest.json naming its `input`. Export starts from its own input and follows each manifest's input,
and every other stage folder a config names (a question generator trained by qft/qpo, a difficulty
regressor), back to the start. A path that was relative to another working directory is looked up next
to the folder that named it (the pipeline keeps every stage in one folder). `stage_folders: [...]`
lists the folders instead.

    datasets.load_dataset("parquet", data_files="OUTPUT/data/*.parquet", split="train")
    datasets.load_dataset("json", data_files="OUTPUT/shard-*.jsonl", split="train")
    datasets.load_dataset("OUTPUT", split="train")    # reads the card's data_files
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from scalequest import io
from scalequest.config import RowStageConfig
from scalequest.hub import license_of, push_folder, require_token
from scalequest.models import EMBEDDED, EMBEDDED_HUB_ID
from scalequest.runner import finished_stats
from scalequest.stage import RowStage, Shard, ShardResult

log = logging.getLogger(__name__)

DATA_DIR = "data"
CARD = "README.md"
CARD_TEMPLATE = "cards/dataset_card.md"  # package data: a Jinja template for huggingface_hub.DatasetCard
PIPELINE_FILE = "pipeline.yaml"
REPORT_DIR = "report"  # `scalequest report`'s figures, pushed with the data (scalequest.report, above this module)

COLUMN_MEANINGS = {
    "id": "row id (the question's id)",
    "query": "the synthesized question",
    "response": "the selected solution (math: final answer in \\boxed{}; code: one fenced Python block)",
    "question_id": "id of the question in the generate-questions output",
    "generator": "model that wrote the question",
    "solver": "model that wrote the response",
    "answer": "final answer extracted from the response",
    "program": "the Python program extracted from the response (code)",
    "tests_passed": "tests the program passed, of tests_total: the question's asserts and the responses' own (code)",
    "tests_total": "tests the program ran on (code)",
    "codet_score": "agreement of the program's test results with the question's other responses, CodeT (code)",
    "reward_score": "reward model score of the response (highest of its question's responses)",
    "reward_model": "model that scored the responses",
    "difficulty": "predicted difficulty of the question",
    "answer_agreement": "how many of the question's responses reached the same final answer",
}


class ExportConfig(RowStageConfig):
    """Write the final dataset as a Hugging Face dataset folder (Parquet + JSONL) with a dataset card."""

    stage = "export"

    question_field: str = Field("question", description="Input field exported as `query`.")
    response_field: str = Field("response", description="Input field exported as `response`.")
    columns: list[str] = Field(
        [
            "question_id",
            "generator",
            "solver",
            "answer",
            "program",
            "tests_passed",
            "tests_total",
            "codet_score",
            "reward_score",
            "reward_model",
            "difficulty",
        ],
        description="Provenance columns exported after query and response, each only when some row has it.",
    )
    stage_folders: list[Path] | None = Field(
        None,
        description="Earlier stage output folders to describe in the card, upstream first; default: follow each "
        "manifest's input back from `input`.",
    )
    name: str = Field("ScaleQuest synthetic math dataset", description="Dataset title on the card.")
    license: str | None = Field(
        None,
        description="The dataset's license on the card (a Hub license id, e.g. apache-2.0); default: from the "
        "licenses of the models and data used (theirs when they share one, apache-2.0 when all are permissive, "
        "else other).",
    )
    card_samples: int = Field(3, ge=0, description="Rows shown on the card.")
    push_to_hub: str | None = Field(
        None,
        description="Also upload the card, pipeline.yaml, the Parquet files and the run's report figures to this Hub "
        "dataset repo (user/name), also when the export had already finished; the token comes from the environment "
        "(HF_TOKEN), never from the config.",
    )
    private: bool = Field(
        False, description="Create the Hub repo as private (with push_to_hub); an existing repo keeps its visibility."
    )
    shard_size: int = Field(50000, ge=1, description="Rows per JSONL shard and Parquet file.")


# ----------------------------------------------------------------------------------------------
# Lineage: the earlier stages, found through their manifests
# ----------------------------------------------------------------------------------------------


def stage_folder(value: Any, named_by: Path) -> Path | None:
    """The stage output folder a config value points to, if it is one (config.yaml inside)."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    path = Path(value)
    candidates = [path] if path.is_absolute() else [path, named_by.parent / path.name]
    for candidate in candidates:
        try:
            if (candidate / io.CONFIG).is_file():
                return candidate
        except OSError:  # a prompt or other text that is no path at all (name too long)
            continue
    return None


def upstream_references(config: Any) -> Iterator[str]:
    """Every string in a resolved config but its own output: inputs, models, regressors, ... (nested too)."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key != "output":
                yield from upstream_references(value)
    elif isinstance(config, list):
        for value in config:
            yield from upstream_references(value)
    elif isinstance(config, str):
        yield config


def finished_manifest(folder: Path) -> dict:
    """The manifest of an earlier stage's folder; a folder with config.yaml but no manifest is a stage that did not
    finish."""
    manifest = io.read_manifest(folder)
    if manifest is not None:
        return manifest
    if not (folder / io.CONFIG).is_file():
        raise io.DataError(f"{folder} is not a stage output (no {io.CONFIG} and no {io.MANIFEST})")
    stage = (yaml.safe_load((folder / io.CONFIG).read_text()) or {}).get("stage")
    raise io.DataError(f"{folder} is the output of stage {stage!r}, which has not finished; rerun that stage first")


def lineage(start: Path | None) -> list[tuple[Path, dict]]:
    """(folder, manifest) of every stage `start` came from, upstream first, `start` last."""
    found: list[tuple[Path, dict]] = []
    seen: set[Path] = set()

    def visit(folder: Path) -> None:
        key = folder.resolve()
        if key in seen:
            return
        seen.add(key)
        manifest = finished_manifest(folder)
        references = [manifest.get("input"), *upstream_references(manifest.get("config") or {})]
        for reference in references:
            upstream = stage_folder(reference, folder)
            if upstream is not None:
                visit(upstream)
        found.append((folder, manifest))

    if start is not None and (start / io.CONFIG).is_file():
        visit(start)
    return found


# ----------------------------------------------------------------------------------------------
# The pipeline that made the dataset, as a YAML `scalequest run -c` reads
# ----------------------------------------------------------------------------------------------

# The commands in pipeline order: the order of `pipeline.STAGES`, which imports this module and so cannot be read
# from here (test_export checks that the two agree). A pipeline YAML lists its steps in this order.
PIPELINE_ORDER = (
    "qft",
    "qpo-data",
    "qpo",
    "generate-questions",
    "merge",
    "filter-language",
    "filter-solvability",
    "difficulty-label",
    "difficulty-train",
    "filter-difficulty",
    "generate-responses",
    "reward-train",
    "reward-select",
    "decontaminate",
    "export",
    "sft",
    "evaluate",
)


def saved_config(folder: Path, manifest: dict) -> dict:
    """A stage's resolved config as it saved it in config.yaml (its manifest's copy when that file is gone)."""
    path = folder / io.CONFIG
    saved = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return copy.deepcopy(saved.get("config") or manifest.get("config") or {})


def step_names(steps: list[tuple[str, Path]]) -> list[str]:
    """A pipeline step name for each (command, folder): the folder's name where it is one for that command (a
    pipeline names each folder after its step, `generate-questions@deepseek` included), else the command,
    tagged `@2`, `@3`, ... when a command comes again."""
    names: list[str] = []
    for command, folder in steps:
        name = folder.name if folder.name.split("@", 1)[0] == command else command
        number = 2
        while name in names:
            name, number = f"{command}@{number}", number + 1
        names.append(name)
    return names


def pipeline_yaml(steps: list[tuple[str, Path, dict]]) -> dict:
    """The pipeline YAML ({output_dir, stages}) that reruns `steps`, each (command, folder, resolved config).

    Every field is written as the stage resolved it, so `scalequest run -c` builds the same configs. Where a
    value names another step's output it becomes `${stages.NAME.output}` and a step's `output` is left out
    when it is OUTPUT_DIR/NAME, so changing `output_dir` reruns the whole chain into a new folder. Relative
    paths are relative to the directory the stages ran from, as in any pipeline YAML."""
    order = {command: index for index, command in enumerate(PIPELINE_ORDER)}
    steps = sorted(steps, key=lambda step: order.get(step[0], len(order)))  # stable: a command's steps keep order
    names = step_names([(command, folder) for command, folder, _ in steps])
    outputs = [str(config.get("output") or folder) for (_, folder, config) in steps]
    parents = Counter(str(Path(output).parent) for output in outputs)
    output_dir = parents.most_common(1)[0][0] if parents else "."
    by_text = {output: name for output, name in zip(outputs, names)}
    by_folder = {folder.resolve(): name for (_, folder, _), name in zip(steps, names)}

    def reference(value: Any, named_by: Path) -> Any:
        if isinstance(value, dict):
            return {key: reference(item, named_by) for key, item in value.items()}
        if isinstance(value, list):
            return [reference(item, named_by) for item in value]
        if not isinstance(value, str):
            return value
        name = by_text.get(value)
        if name is None:
            found = stage_folder(value, named_by)
            name = by_folder.get(found.resolve()) if found is not None else None
        return f"${{stages.{name}.output}}" if name is not None else value

    stages: dict[str, dict] = {}
    for (_, folder, config), name, output in zip(steps, names, outputs):
        values = {key: reference(value, folder) for key, value in config.items() if key != "output"}
        if Path(output) != Path(output_dir) / name:
            values = {"output": output, **values}
        stages[name] = values
    return {"output_dir": output_dir, "stages": stages}


# ----------------------------------------------------------------------------------------------
# The dataset card: huggingface_hub's DatasetCard from the template in scalequest/cards/
# ----------------------------------------------------------------------------------------------

# Licenses that put no condition on a derived dataset an Apache-2.0 license does not also keep.
PERMISSIVE = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "unlicense"}
DATA_FIELDS = ("input", "inputs", "sources", "more_sources")

METHOD = {
    "qft": "**Question fine-tuning** (`qft`): {model} was fine-tuned on questions alone ({sources}), so that it "
    "writes a question when given only the opening of a user turn.",
    "qpo-data": "**QPO preference data** (`qpo-data`): {optimizer} rewrote questions sampled from the generator "
    "toward solvability or difficulty; each rewrite is preferred to its original.",
    "qpo": "**Question preference optimization** (`qpo`): DPO of {model} on those pairs, toward the rewrites.",
    "generate-questions": "**Question generation** (`generate-questions`): {engine} sampled {num} questions from "
    "nothing but its chat template's opening of a user turn (the pre-query prefix).",
    "merge": "**Merge** (`merge`): the questions of several generators, combined.",
    "filter-language": "**Language filter** (`filter-language`): empty and non-ASCII questions and duplicates removed.",
    "filter-solvability": "**Solvability filter** (`filter-solvability`): {engine} judged each question; only "
    "those it judged solvable{undecided} were kept.",
    "difficulty-label": "**Difficulty labels** (`difficulty-label`): {engine} solved questions with known answers "
    "({input}); its fail rate is their difficulty.",
    "difficulty-train": "**Difficulty scorer** (`difficulty-train`): {model} trained to predict that fail rate.",
    "filter-difficulty": "**Difficulty filter** (`filter-difficulty`): the scorer rated every question and the "
    "easiest were removed.",
    "generate-responses": "**Responses** (`generate-responses`): {engine} answered each question with step-by-step "
    "reasoning ({n} samples per question); responses without a final answer were dropped.",
    "reward-train": "**Reward model** (`reward-train`): {model} trained to score the solver's correct samples above "
    "its incorrect ones.",
    "reward-select": "**Reward selection** (`reward-select`): {reward} scored every response and the best one per "
    "question was kept.",
    "decontaminate": "**Decontamination** (`decontaminate`): questions sharing a {ngram}-gram with the test "
    "questions of {benchmarks} were removed.",
    "export": "**Export** (`export`): query/response pairs with their provenance, as Parquet and JSONL.",
}
# The paper's figures for the filters (arXiv 2410.18693), beside this run's.
PAPER_REMOVED = {"filter-language": "20.1%", "filter-solvability": "19.4%", "filter-difficulty": "9.2%"}


def size_category(rows: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if rows < limit:
            return name
    return "10M<n<100M"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def funnel_table(stages: list[tuple[Path, dict]]) -> str:
    lines = [
        "| stage | folder | rows in | rows out | removed (why) | tokens in | tokens out | wall time (s) |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for folder, manifest in stages:
        dropped = ", ".join(f"{reason}: {count:,}" for reason, count in (manifest.get("dropped") or {}).items()) or "-"
        units = manifest.get("row_units") or {}
        rows_in = fmt(manifest.get("rows_in")) + (f" {units['in']}" if "in" in units else "")
        rows_out = fmt(manifest.get("rows_out")) + (f" {units['out']}" if "out" in units else "")
        if manifest.get("steps") is not None:  # a training stage
            rows_out = f"model, {manifest['steps']} steps"
        lines.append(
            f"| {manifest.get('stage')} | `{folder.name}` | {rows_in} | {rows_out} | {dropped} | "
            f"{fmt(manifest.get('tokens_in'))} | {fmt(manifest.get('tokens_out'))} | "
            f"{fmt(manifest.get('wall_seconds'))} |"
        )
    return "\n".join(lines)


def config_models(config: Any, prefix: str = "") -> dict[str, dict]:
    """{field path: {model, revision}} of every `model` in a resolved config (manifests older than `models`)."""
    found: dict[str, dict] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "model" and isinstance(value, str):
                found[prefix + key] = {"model": value, "revision": config.get("revision"), "commit": None}
            else:
                found.update(config_models(value, f"{prefix}{key}."))
    return found


def stage_models(folder: Path, manifest: dict) -> list[tuple[str, dict]]:
    """(role, {model, revision, commit}) of the models a stage read that are not an earlier stage's output (those
    are described by that stage): `engine`, `reward`, `regressor`, `optimizer`, ... or `trained from`."""
    models = manifest.get("models")
    if models is None:
        models = config_models(manifest.get("config") or {})
    found = []
    for field_path, entry in models.items():
        if not entry.get("model") or stage_folder(entry["model"], folder) is not None:
            continue
        role = field_path.rsplit(".", 1)[0] if "." in field_path else "trained from"
        found.append((role, entry))
    return found


def data_sources(config: Any) -> Iterator[Any]:
    """The data sources a resolved config reads (input, inputs, sources, more_sources[].input)."""
    for key in DATA_FIELDS:
        value = config.get(key) if isinstance(config, dict) else None
        for item in value if isinstance(value, list) else [value]:
            if key == "more_sources" and isinstance(item, dict):
                yield item.get("input")
            elif item is not None:
                yield item


def used(stages: list[tuple[Path, dict]]) -> list[dict]:
    """Every model and dataset the stages read (not an earlier stage's output), once each, with its license:
    {kind, name, on_hub, used_by, license, license_name}."""
    rows: dict[tuple[str, str], dict] = {}

    def add(kind: str, name: str, user: str, revision: str | None = None, on_hub: bool = True) -> None:
        entry = rows.get((kind, name))
        if entry is None:
            license_id, license_name = license_of(name, kind, revision)
            entry = rows[(kind, name)] = {
                "kind": kind,
                "name": name,
                "on_hub": on_hub,
                "used_by": [],
                "license": license_id,
                "license_name": license_name,
            }
        if user not in entry["used_by"]:
            entry["used_by"].append(user)

    for folder, manifest in stages:
        stage = str(manifest.get("stage"))
        for role, model in stage_models(folder, manifest):
            name = EMBEDDED_HUB_ID if model["model"] == EMBEDDED else model["model"]
            local = name != EMBEDDED_HUB_ID and (name.startswith((".", "/", "~")) or Path(name).expanduser().exists())
            add("model", name, f"{stage} ({role})", model.get("commit") or model.get("revision"), not local)
        for source in data_sources(manifest.get("config") or {}):
            if isinstance(source, dict) and source.get("hub"):
                add("dataset", source["hub"], stage, source.get("revision"))
            elif isinstance(source, dict) and source.get("bundled"):
                add("dataset", f"scalequest/{source['bundled']}", f"{stage} (bundled with scalequest)", on_hub=False)
            else:
                path = source.get("path") if isinstance(source, dict) else source
                if isinstance(path, str) and stage_folder(path, folder) is None:
                    add("dataset", path, stage, on_hub=False)
    return list(rows.values())


def dataset_license(uses: list[dict]) -> str:
    """The dataset's license from those of the models and data that made it: their license when they all share
    one, Apache-2.0 when all are permissive, else `other` (the card lists each one)."""
    licenses = {entry["license"] for entry in uses}
    if len(licenses) == 1 and "unknown" not in licenses and "other" not in licenses:
        return licenses.pop()
    if licenses and licenses <= PERMISSIVE:
        return "apache-2.0"
    return "other"


def config_value(config: dict, path: str) -> Any:
    node: Any = config
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def method_lines(stages: list[tuple[Path, dict]]) -> list[str]:
    """One line per stage that ran, upstream first: what it did, with its models and settings."""

    def model(config: dict, path: str) -> str:
        value = config_value(config, path)
        if not isinstance(value, str):
            return "a model"
        return f"`{EMBEDDED_HUB_ID}`" if value == EMBEDDED else f"`{value}`"

    def data(value: Any) -> str:
        items = value if isinstance(value, list) else [value]
        names = []
        for item in items:
            if isinstance(item, dict):
                item = item.get("hub") or (f"bundled {item['bundled']}" if item.get("bundled") else item.get("path"))
            names.append(f"`{item}`")
        return ", ".join(names) or "-"

    lines = []
    for _, manifest in stages:
        stage, config = str(manifest.get("stage")), manifest.get("config") or {}
        values = {
            "model": model(config, "model"),
            "engine": model(config, "engine.model"),
            "reward": model(config, "reward.model"),
            "optimizer": model(config, "optimizer.model"),
            "sources": data(config.get("sources")),
            "input": data(config.get("input")),
            "num": fmt(config.get("num")),
            "n": fmt(config_value(config, "sampling.n")),
            "ngram": fmt(config.get("ngram")),
            "undecided": " (and those it gave no verdict on)" if config.get("keep_undecided") else "",
            "benchmarks": ", ".join(map(str, config.get("benchmarks") or [])) or "the benchmarks",
        }
        template = METHOD.get(stage, f"`{stage}`.")
        lines.append(template.format(**values))
    return lines


def method_note(stages: list[tuple[Path, dict]]) -> str:
    """What the rows are when no reward model chose one response per question (the demo): several per question."""
    ran = {str(m.get("stage")) for _, m in stages}
    responses = next((m for _, m in stages if m.get("stage") == "generate-responses"), None)
    n = config_value((responses or {}).get("config") or {}, "sampling.n")
    if responses is None or "reward-select" in ran or not isinstance(n, int) or n < 2:
        return ""
    return (
        f"No reward model selected among the responses: a question can appear with up to {n} responses "
        "(`query` repeated), each with a final answer."
    )


def figures(stages: list[tuple[Path, dict]]) -> list[dict]:
    """The run's figures: questions generated, what each filter removed (beside the paper's share),
    decontamination, the difficulty scorer's held-out fit, and totals of tokens and time."""
    rows: list[dict] = []

    def add(figure: str, value: str, paper: str = "") -> None:
        rows.append({"figure": figure, "value": value, "paper": paper})

    generated = [m.get("rows_out") or 0 for _, m in stages if m.get("stage") == "generate-questions"]
    if generated:
        add("questions generated", f"{sum(generated):,}")
    for _, manifest in stages:
        stage, rows_in = manifest.get("stage"), manifest.get("rows_in")
        removed = sum((manifest.get("dropped") or {}).values())
        if manifest.get("row_units") or manifest.get("steps") is not None or not rows_in or stage == "export":
            continue
        if stage in PAPER_REMOVED or removed:
            add(
                f"{stage}: removed",
                f"{removed:,} of {rows_in:,} ({removed / rows_in:.1%})",
                PAPER_REMOVED.get(str(stage), ""),
            )
        if stage == "decontaminate":
            ratios = {k: v for k, v in (manifest.get("clean_ratio") or {}).items() if v is not None and k != "all"}
            if ratios:
                shown = ", ".join(f"{name} {ratio:.1%}" for name, ratio in ratios.items())
                add("decontaminate: clean ratio", shown, "97.4% on average")
    for _, manifest in stages:
        if manifest.get("stage") == "difficulty-train" and manifest.get("held_out"):
            held = manifest["held_out"]
            mse, rho = held.get("mse"), held.get("spearman")
            add(
                "difficulty scorer, held out: MSE / Spearman",
                f"{'-' if mse is None else f'{mse:.4f}'} / {'-' if rho is None else f'{rho:.3f}'}",
            )
    tokens_in = sum(m.get("tokens_in") or 0 for _, m in stages)
    tokens_out = sum(m.get("tokens_out") or 0 for _, m in stages)
    add("tokens read / written by models", f"{tokens_in:,} / {tokens_out:,}")
    add("processing time (hours)", f"{sum(m.get('wall_seconds') or 0 for _, m in stages) / 3600:.3f}")
    add("GPU hours", f"{sum(m.get('gpu_hours') or 0 for _, m in stages):.3f}")
    return rows


def shorten(row: dict, limit: int = 1500) -> dict:
    return {
        key: (value[:limit] + " [...]" if isinstance(value, str) and len(value) > limit else value)
        for key, value in row.items()
    }


def card_text(
    config: ExportConfig,
    stages: list[tuple[Path, dict]],
    own: dict,
    columns: list[str],
    samples: list[dict],
    pipeline: dict,
) -> str:
    """The README: the Hub's metadata (license, sources, creators, tasks, size, data files), then what the dataset
    is, how to load it, its columns, the stages that made it, the run's figures, the models and data used with
    their licenses, the pipeline that reproduces it and sample rows. Rendered by huggingface_hub's
    `DatasetCard.from_template` from `scalequest/cards/dataset_card.md`."""
    from huggingface_hub import DatasetCard, DatasetCardData

    rows = own["rows_out"]
    described = stages + [(config.output, own)]
    uses = used(stages)
    license_id = config.license or dataset_license(uses)
    hub_sources = sorted({entry["name"] for entry in uses if entry["kind"] == "dataset" and entry["on_hub"]})
    metadata = DatasetCardData(
        pretty_name=config.name,
        license=license_id,
        language=["en"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        multilinguality=["monolingual"],
        source_datasets=hub_sources or ["original"],
        task_categories=["question-answering", "text-generation"],
        size_categories=[size_category(rows)],
        tags=["math", "synthetic", "scalequest"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/train-*.parquet"}]}],
    )
    template = resources.files("scalequest").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8")
    card = DatasetCard.from_template(
        metadata,
        template_str=template,
        title=config.name,
        rows=f"{rows:,}",
        data_dir=DATA_DIR,
        columns=[{"name": name, "meaning": COLUMN_MEANINGS.get(name, "")} for name in columns],
        method=method_lines(described),
        method_note=method_note(described),
        funnel=funnel_table(described),
        figures=figures(described),
        uses=[{**entry, "used_by": ", ".join(entry["used_by"])} for entry in uses],
        chosen_license=license_id,
        license_given=config.license is not None,
        pipeline_file=PIPELINE_FILE,
        pipeline_yaml=yaml.safe_dump(pipeline, sort_keys=False, allow_unicode=True),
        samples=[json.dumps(shorten(row), indent=2, ensure_ascii=False) for row in samples],
    )
    return str(card).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------


class Export(RowStage):
    config: ExportConfig

    def check(self) -> None:
        config = self.config
        if config.push_to_hub:  # a missing token fails now, not after the export
            require_token(config.push_to_hub)
        # Found now, so a missing or unfinished earlier stage fails before any output is written.
        if config.stage_folders is not None:
            self.stages = [(folder, finished_manifest(folder)) for folder in config.stage_folders]
        else:
            self.stages = lineage(config.input.path)

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.question_field, self.config.response_field)

    def prepare(self) -> None:
        """The provenance columns some row has (every exported row gets exactly these), and for each the first
        row where it is not null."""
        wanted = [name for name in self.config.columns if name not in ("id", "query", "response")]
        first_with: dict[str, int] = {}
        for position, row in enumerate(io.read_rows(self.config.input)):
            for name in wanted:
                if name not in first_with and row.get(name) is not None:
                    first_with[name] = position
            if len(first_with) == len(wanted):
                break
        self.columns = ["id", "query", "response", *(name for name in wanted if name in first_with)]
        self.leading = sorted(set(first_with.values()))

    def input_shards(self) -> Iterator[Shard]:
        """Input rows in order, except that the first shard starts with the rows that give each column its first
        non-null value. `datasets.load_dataset("json")` takes the column types from the start of the first file
        and fails on a later file whose column it saw only as null (a difficulty score that only some rows have)."""
        leading = set(self.leading)
        front = (
            [row for position, row in enumerate(io.read_rows(self.config.input)) if position in leading]
            if leading
            else []
        )
        batch, index = front, 0
        for position, row in enumerate(io.read_rows(self.config.input)):
            if position in leading:
                continue
            if len(batch) >= self.config.shard_size:
                yield Shard(index, batch)
                batch, index = [], index + 1
            batch.append(row)
        if batch:
            yield Shard(index, batch)

    def process(self, shard: Shard) -> ShardResult:
        result = ShardResult(rows=[])
        for row in shard.rows:
            query, response = row[self.config.question_field], row[self.config.response_field]
            if not (isinstance(query, str) and query.strip() and isinstance(response, str) and response.strip()):
                result.remove(row, "empty_query_or_response")
                continue
            values = {"id": row["id"], "query": query, "response": response}
            result.rows.append({name: values[name] if name in values else row.get(name) for name in self.columns})
        return result

    def finalize(self) -> dict:
        out = self.config.output
        parquet_files, rows = write_parquet(out, self.columns)
        samples = []
        for row in io.read_rows(out):
            if len(samples) >= self.config.card_samples:
                break
            samples.append(row)
        # This stage's own funnel line, from its shard stats (its manifest is written after finalize).
        own: dict[str, Any] = {
            "stage": self.config.stage,
            "rows_in": 0,
            "rows_out": rows,
            "dropped": {},
            "wall_seconds": 0.0,
        }
        for path in finished_stats(out):
            stats = json.loads(path.read_text())
            own["rows_in"] += stats["rows_in"]
            own["wall_seconds"] += stats["seconds"]
            for reason, count in stats["dropped"].items():
                own["dropped"][reason] = own["dropped"].get(reason, 0) + count
        steps = [(str(m.get("stage")), folder, saved_config(folder, m)) for folder, m in self.stages]
        steps.append((self.config.stage, out, self.config.model_dump(mode="json")))
        pipeline = pipeline_yaml(steps)
        io.atomic_write_text(out / PIPELINE_FILE, yaml.safe_dump(pipeline, sort_keys=False, allow_unicode=True))
        io.atomic_write_text(out / CARD, card_text(self.config, self.stages, own, self.columns, samples, pipeline))
        return {
            "rows": rows,
            "columns": self.columns,
            "parquet_files": [str(path.relative_to(out)) for path in parquet_files],
            "card": CARD,
            "pipeline": PIPELINE_FILE,
            "lineage": [str(folder) for folder, _ in self.stages],
        }

    def after_finish(self, manifest: dict[str, Any]) -> None:
        if self.config.push_to_hub:  # after the manifest, and also when the export had already finished
            push_to_hub(self.config)


def write_parquet(out: Path, columns: list[str]) -> tuple[list[Path], int]:
    """One Parquet file per JSONL shard, all with one schema: types are promoted across shards (a column that
    is null in one shard and a number in another is a number everywhere). Two passes, one shard in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(path: Path) -> pa.Table:
        return pa.Table.from_pylist(list(io.read_file(path)))

    shards = sorted(out.glob(io.SHARD_GLOB))
    schemas, rows = [], 0
    for path in shards:
        shard_table = table(path)
        rows += shard_table.num_rows
        if shard_table.num_rows:
            schemas.append(shard_table.schema)
    if schemas:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    else:  # no rows at all: still a loadable, typed empty dataset
        schema = pa.schema([(name, pa.string()) for name in columns])
    folder = out / DATA_DIR
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.parquet"):  # from an earlier run, maybe with another number of shards
        stale.unlink()
    written = []
    for index, path in enumerate(shards):
        shard_table = table(path)
        shard_table = shard_table.cast(schema) if shard_table.num_rows else schema.empty_table()
        target = folder / f"train-{index:05d}-of-{len(shards):05d}.parquet"
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        pq.write_table(shard_table, tmp)
        os.replace(tmp, target)
        written.append(target)
    return written, rows


def push_to_hub(config: ExportConfig) -> None:
    """Upload the card, the pipeline YAML, the Parquet files and the report figures (OUTPUT/report/*.png, when
    `scalequest report RUN_DIR --output OUTPUT/report` wrote them; not the page, which names local paths) to a Hub
    dataset repo (created when missing)."""
    patterns = [CARD, PIPELINE_FILE, f"{DATA_DIR}/*.parquet"]
    if any((config.output / REPORT_DIR).glob("*.png")):
        patterns.append(f"{REPORT_DIR}/*.png")
    push_folder(
        config.push_to_hub,
        config.output,
        repo_type="dataset",
        private=config.private,
        allow_patterns=patterns,
        commit_message="Upload ScaleQuest dataset",
    )
