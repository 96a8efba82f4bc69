"""Running a row-wise stage over shards: resume, skip finished work, write the manifest last.

A row-wise stage is a `RowStage`: `setup()` loads what it needs once per worker (an engine, a model),
`process(shard)` turns one shard of rows into output rows plus counts. The runner decides which shards
still need work, hands them to an executor, and records what happened in `manifest.json`.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from scalequest import io
from scalequest.config import EngineConfig, RowStageConfig, StageConfig
from scalequest.models import model_provenance

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("scalequest", "torch", "transformers", "trl", "peft", "datasets", "vllm", "openai", "math-verify", "ray")


@dataclass
class Shard:
    index: int
    rows: list[dict]


@dataclass
class ShardResult:
    rows: list[dict]
    dropped: Counter = field(default_factory=Counter)  # reason -> rows removed
    tokens_in: int = 0
    tokens_out: int = 0
    counts: Counter = field(default_factory=Counter)  # any other per-stage tallies


class RowStage(ABC):
    """Base of every row-wise stage. Subclasses set `config` and implement `process`."""

    def __init__(self, config: StageConfig):
        self.config = config

    def prepare(self) -> None:
        """Whole-input work done once by the driver before shards run (e.g. finding duplicates)."""

    def setup(self) -> None:
        """Load models; called once per worker, and only when some shard still needs work."""

    def check(self) -> None:
        """Cheap checks of the config (model paths, fields) before anything is written."""

    def teardown(self) -> None:
        """Release what `setup` loaded."""

    def input_fingerprint(self) -> str | None:
        if isinstance(self.config, RowStageConfig):
            return io.input_fingerprint(self.config.input)
        return None

    def required_fields(self) -> tuple[str, ...]:
        """Fields every input row must have; checked before any output is written."""
        return ()

    def gpus_per_replica(self) -> int:
        """GPUs one copy of this stage's models takes on a cluster with GPUs (the Ray executor sizes its
        actors by it): the largest tensor-parallel size among the local engines in the config."""
        engines = [getattr(self.config, name) for name in type(self.config).model_fields]
        return max((e.tensor_parallel_size for e in engines if isinstance(e, EngineConfig) and e.engine != "openai"), default=0)

    def count_input_rows(self) -> int:
        """Read the whole input once, so a corrupt line or a missing field fails before any output."""
        assert isinstance(self.config, RowStageConfig)
        required = self.required_fields()
        count = 0
        for count, row in enumerate(io.read_rows(self.config.input), start=1):
            missing = [name for name in required if name not in row]
            if missing:
                raise io.DataError(f"input {self.config.input}: row {row['id']} has no field {missing[0]!r} (fields: {', '.join(row)})")
        return count

    def input_shards(self) -> Iterator[Shard]:
        """Input rows cut into shards of `shard_size`; shard i of the input becomes shard i of the output."""
        assert isinstance(self.config, RowStageConfig)
        size = self.config.shard_size
        batch: list[dict] = []
        index = 0
        for row in io.read_rows(self.config.input):
            batch.append(row)
            if len(batch) == size:
                yield Shard(index, batch)
                batch, index = [], index + 1
        if batch:
            yield Shard(index, batch)

    @abstractmethod
    def process(self, shard: Shard) -> ShardResult:
        """The rows of one shard in, the rows to keep (and drop counts, tokens) out."""

    def finalize(self) -> dict[str, Any]:
        """Called once every shard is done: extra manifest entries (model names, summaries); may write side files."""
        return {}

    def devices(self) -> tuple[str, int]:
        """(device name, GPUs in use) of this worker, for GPU-hour accounting: the engine's or the model's."""
        gpus = getattr(getattr(self, "engine", None), "gpus", 0)
        model_device = getattr(getattr(self, "model", None), "device", None)
        if not gpus and getattr(model_device, "type", None) == "cuda":
            gpus = 1
        if not gpus:
            return "cpu", 0
        import torch

        return torch.cuda.get_device_name(), gpus

    @classmethod
    def run(cls, config: StageConfig, force: bool = False) -> dict[str, Any]:
        return run_stage(cls(config), force=force)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_hash(config: StageConfig, fingerprint: str | None) -> str:
    return f"{config.config_hash()}-{fingerprint or 'none'}"


def prepare_output(config: StageConfig, fingerprint: str | None, force: bool) -> bool:
    """Check the output folder; return True when the stage already finished with this config and input."""
    out = config.output
    wanted = run_hash(config, fingerprint)
    if out.exists() and not out.is_dir():
        raise io.DataError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        saved_path = out / io.CONFIG
        if not saved_path.is_file():
            raise io.DataError(f"output folder {out} is not empty and holds no ScaleQuest stage output; choose another output")
        saved = yaml.safe_load(saved_path.read_text()) or {}
        if saved.get("stage") != config.stage:
            raise io.DataError(
                f"output folder {out} holds the output of stage {saved.get('stage')!r}, not {config.stage!r}; choose another output"
            )
        same = saved.get("run_hash") == wanted
        if same and io.read_manifest(out) is not None and not force:
            return True
        started_work = any(path.name != io.CONFIG for path in out.iterdir())
        if not same and started_work and not force:
            raise io.DataError(
                f"output folder {out} holds a {config.stage} run with another config or input; pass --force to start over, or choose another output"
            )
        if force:
            for path in out.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    io.remove_temporary_files(out)
    (out / io.MANIFEST).unlink(missing_ok=True)
    resolved = {"stage": config.stage, "run_hash": wanted, "config": config.model_dump(mode="json")}
    io.atomic_write_text(out / io.CONFIG, yaml.safe_dump(resolved, sort_keys=False))
    return False


def write_shard(out: Path, shard: Shard, result: ShardResult, seconds: float, devices: tuple[str, int] = ("cpu", 0)) -> dict:
    """Stats first, then the rows: a shard counts as done only once its rows file is in place."""
    stats = {
        "device": devices[0],
        "gpus": devices[1],
        "rows_in": len(shard.rows),
        "rows_out": len(result.rows),
        "dropped": dict(result.dropped),
        "counts": dict(result.counts),
        "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out,
        "seconds": round(seconds, 3),
    }
    io.atomic_write_text(io.stats_path(out, shard.index), json.dumps(stats))
    io.atomic_write_text(io.shard_path(out, shard.index), io.to_jsonl(result.rows))
    return stats


def check_input_finished(config: StageConfig) -> None:
    """An input folder whose stage never finished would silently give a partial dataset: name that stage."""
    source = getattr(config, "input", None)
    folder = io.stage_folder(source) if source is not None else None
    if folder is not None and io.read_manifest(folder) is None:
        saved = yaml.safe_load((folder / io.CONFIG).read_text()) or {}
        raise io.DataError(
            f"input {source} is the output of stage {saved.get('stage')!r}, which has not finished; rerun that stage first"
        )


def run_stage(stage: RowStage, force: bool = False) -> dict[str, Any]:
    """Run a row-wise stage to completion (resuming finished shards) and return its manifest."""
    config, out = stage.config, stage.config.output
    started = time.time()
    check_input_finished(config)
    stage.check()
    if config.executor.kind == "ray":
        from scalequest.executors.ray import check_cluster

        check_cluster(stage)  # an unreachable cluster or too few GPUs fails before anything is written
    fingerprint = stage.input_fingerprint()
    rows_in_total = stage.count_input_rows()
    if prepare_output(config, fingerprint, force):
        log.info("%s: already finished in %s (same config and input); pass --force to redo", config.stage, out)
        return io.read_manifest(out)
    if rows_in_total == 0:
        log.warning("%s: the input holds no rows; writing an empty output", config.stage)

    stage.prepare()
    pending = (shard for shard in stage.input_shards() if not io.shard_path(out, shard.index).is_file())
    if config.executor.kind == "ray":
        from scalequest.executors.ray import run_ray

        run_ray(stage, pending, out, total_rows=rows_in_total, done_rows=done_rows(out))
    else:
        from scalequest.executors.local import run_local

        run_local(stage, pending, out, total_rows=rows_in_total, done_rows=done_rows(out))
    if not any(out.glob(io.SHARD_GLOB)):  # no input rows: one empty shard keeps the output readable downstream
        write_shard(out, Shard(0, []), ShardResult(rows=[]), 0.0)
    manifest = build_manifest(stage, fingerprint, started)
    io.atomic_write_text(out / io.MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def done_rows(out: Path) -> int:
    return sum(json.loads(p.read_text())["rows_in"] for p in finished_stats(out))


def finished_stats(out: Path) -> list[Path]:
    """Stats of shards whose rows are in place (a stats file without its shard is from a killed run)."""
    return [p for p in sorted((out / io.STATS_DIR).glob("*.json")) if io.shard_path(out, int(p.stem)).is_file()]


def build_manifest(stage: RowStage, fingerprint: str | None, started: float) -> dict[str, Any]:
    config, out = stage.config, stage.config.output
    totals: Counter = Counter()
    dropped: Counter = Counter()
    counts: Counter = Counter()
    devices: set[str] = set()
    stats_files = finished_stats(out)
    for path in stats_files:
        stats = json.loads(path.read_text())
        totals.update({k: stats[k] for k in ("rows_in", "rows_out", "tokens_in", "tokens_out", "seconds")})
        totals["gpu_seconds"] += stats["seconds"] * stats.get("gpus", 0)
        devices.add(stats.get("device", "cpu"))
        dropped.update(stats["dropped"])
        counts.update(stats["counts"])
    input_folder = io.stage_folder(config.input) if isinstance(config, RowStageConfig) else None
    input_manifest = io.read_manifest(input_folder) if input_folder else None
    return {
        "stage": config.stage,
        "config": config.model_dump(mode="json"),
        "config_hash": config.config_hash(),
        "input": str(config.input) if isinstance(config, RowStageConfig) else None,
        "input_fingerprint": fingerprint,
        "input_stage": input_manifest.get("stage") if input_manifest else None,
        "rows_in": totals["rows_in"],
        "rows_out": totals["rows_out"],
        "dropped": dict(dropped),
        "counts": dict(counts),
        "shards": len(stats_files),
        "tokens_in": totals["tokens_in"],
        "tokens_out": totals["tokens_out"],
        # Processing time summed over every run that contributed a shard (resumes included).
        "wall_seconds": round(totals["seconds"], 3),
        "last_run_seconds": round(time.time() - started, 3),
        "devices": sorted(devices),
        "models": model_provenance(config),
        "gpu_hours": round(totals["gpu_seconds"] / 3600, 6),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
        **stage.finalize(),
    }
