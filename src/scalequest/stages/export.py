"""Export: the final dataset as a Hugging Face dataset folder (Parquet + JSONL) with a dataset card.

    OUTPUT/
      README.md                        dataset card: YAML front matter (data files, tags), then the funnel,
                                       tokens and wall time per stage, the models, every stage's resolved
                                       config and sample rows
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

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from scalequest import io
from scalequest.config import RowStageConfig
from scalequest.runner import finished_stats
from scalequest.stage import RowStage, Shard, ShardResult

log = logging.getLogger(__name__)

DATA_DIR = "data"
CARD = "README.md"

COLUMN_MEANINGS = {
    "id": "row id (the question's id)",
    "query": "the synthesized question",
    "response": "the selected solution, final answer in \\boxed{}",
    "question_id": "id of the question in the generate-questions output",
    "generator": "model that wrote the question",
    "solver": "model that wrote the response",
    "answer": "final answer extracted from the response",
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
        ["question_id", "generator", "solver", "answer", "reward_score", "reward_model", "difficulty"],
        description="Provenance columns exported after query and response, each only when some row has it.",
    )
    stage_folders: list[Path] | None = Field(
        None,
        description="Earlier stage output folders to describe in the card, upstream first; default: follow each "
        "manifest's input back from `input`.",
    )
    name: str = Field("ScaleQuest synthetic math dataset", description="Dataset title on the card.")
    card_samples: int = Field(3, ge=0, description="Rows shown on the card.")
    push_to_hub: str | None = Field(
        None,
        description="Also upload the card and Parquet files to this Hub dataset repo (user/name); needs a login or "
        "HF_TOKEN.",
    )
    private: bool = Field(False, description="Create the Hub repo as private (with push_to_hub).")
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
# The dataset card
# ----------------------------------------------------------------------------------------------


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


def models_used(stages: list[tuple[Path, dict]]) -> list[str]:
    lines = []
    for _, manifest in stages:
        config = manifest.get("config") or {}
        for section in ("engine", "reward"):
            model = (config.get(section) or {}).get("model")
            if model:
                lines.append(f"- {manifest.get('stage')} ({section}): `{model}`")
        if isinstance(config.get("model"), str):
            lines.append(f"- {manifest.get('stage')} (trained from): `{config['model']}`")
    return lines


def shorten(row: dict, limit: int = 1500) -> dict:
    return {
        key: (value[:limit] + " [...]" if isinstance(value, str) and len(value) > limit else value)
        for key, value in row.items()
    }


def card_text(
    config: ExportConfig, stages: list[tuple[Path, dict]], own: dict, columns: list[str], samples: list[dict]
) -> str:
    """The README: Hub metadata as YAML front matter, then how to load, columns, funnel, models, configs, samples."""
    from huggingface_hub import DatasetCardData

    rows = own["rows_out"]
    metadata = DatasetCardData(
        pretty_name=config.name,
        language=["en"],
        task_categories=["text-generation", "question-answering"],
        tags=["math", "synthetic", "scalequest"],
        size_categories=[size_category(rows)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/train-*.parquet"}]}],
    )
    resolved = [{"stage": m.get("stage"), "folder": str(folder), "config": m.get("config")} for folder, m in stages]
    resolved.append({"stage": config.stage, "folder": str(config.output), "config": config.model_dump(mode="json")})
    column_lines = "\n".join(f"| `{name}` | {COLUMN_MEANINGS.get(name, '')} |" for name in columns)
    sample_blocks = "\n\n".join(
        "```json\n" + json.dumps(shorten(row), indent=2, ensure_ascii=False) + "\n```" for row in samples
    )
    sections = [
        f"# {config.name}",
        f"{rows:,} math questions with step-by-step solutions, synthesized from scratch by the ScaleQuest method "
        "([arXiv 2410.18693](https://arxiv.org/abs/2410.18693)) with the `scalequest` package: a question generator "
        "writes questions from nothing but its chat template's opening of a user turn, filters remove unusable ones, "
        "a solver answers each several times, and a reward model keeps the best answer.",
        "## Loading\n\n```python\nfrom datasets import load_dataset\n\n"
        f'dataset = load_dataset("parquet", data_files="{DATA_DIR}/train-*.parquet", split="train")\n'
        '# the same rows as JSONL: load_dataset("json", data_files="shard-*.jsonl", split="train")\n```',
        f"## Columns\n\n| column | meaning |\n|---|---|\n{column_lines}",
        "## How it was made\n\nEvery stage of the pipeline, upstream first: rows in and out, what was removed and why, "
        "tokens read and written by its models, and processing time.\n\n"
        + funnel_table(stages + [(config.output, own)]),
        "## Models\n\n" + ("\n".join(models_used(stages)) or "None recorded."),
        "## Pipeline configuration\n\nThe resolved config of every stage, as each saved it in its "
        "config.yaml.\n\n```yaml\n" + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True) + "```",
        "## Sample rows\n\n" + (sample_blocks or "None."),
        "## License\n\nThe questions and responses were written by the models named above; check their licenses "
        "before use.",
    ]
    return f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------


class Export(RowStage):
    config: ExportConfig

    def check(self) -> None:
        config = self.config
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
        io.atomic_write_text(out / CARD, card_text(self.config, self.stages, own, self.columns, samples))
        return {
            "rows": rows,
            "columns": self.columns,
            "parquet_files": [str(path.relative_to(out)) for path in parquet_files],
            "card": CARD,
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
    """Upload the card and the Parquet files to a Hub dataset repo (created when missing)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(config.push_to_hub, repo_type="dataset", private=config.private, exist_ok=True)
    api.upload_folder(
        repo_id=config.push_to_hub,
        repo_type="dataset",
        folder_path=config.output,
        allow_patterns=[CARD, f"{DATA_DIR}/*.parquet"],
        commit_message="Upload ScaleQuest dataset",
    )
    log.info("export: pushed %s to the Hub dataset %s", config.output, config.push_to_hub)
