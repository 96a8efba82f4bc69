"""Running a row-wise stage over shards: resume, skip finished work, write the manifest last.

A row-wise stage is a `RowStage` (scalequest.stage). The runner decides which shards still need work,
hands them to an executor, and records what happened in `manifest.json`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from scalequest import io, progress
from scalequest.config import ENGINE_CONFIGS, DataSource, RowStageConfig, StageConfig
from scalequest.models import model_provenance, models_fingerprint
from scalequest.stage import RowStage, Shard, ShardResult, read_partial, write_shard

log = logging.getLogger(__name__)

ENGINE_TYPES = tuple(ENGINE_CONFIGS.values())

TRACKED_PACKAGES = (
    "scalequest",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "vllm",
    "openai",
    "math-verify",
    "ray",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_hash(config: StageConfig, fingerprint: str | None) -> str:
    """What a finished output must match to count as done: the config, the input data and the models read."""
    return f"{config.config_hash()}-{fingerprint or 'none'}-{models_fingerprint(config)}"


LOCK = ".lock"
# Files of an output folder that are no stage's data or work: the lock of the driver at work, the stages' log.
# They never make a folder foreign or started, and --force keeps the log (the history of every run there).
BOOKKEEPING = (LOCK, progress.LOG)


@contextmanager
def output_lock(out: Path):
    """Hold OUTPUT/.lock while a driver works on `out`, so that a second driver is refused; a lock whose process
    is gone (killed) is taken over. Creates the folder; removes it again when this run left it empty."""
    if out.exists() and not out.is_dir():
        raise io.DataError(f"output {out} exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path, mine = out / LOCK, f"{socket.gethostname()} {os.getpid()}"
    while True:
        try:
            with open(path, "x") as handle:  # exclusive create: of two drivers, one wins
                handle.write(mine)
            break
        except FileExistsError:
            host, _, pid = path.read_text().partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
                log.warning("%s: taking over the lock of process %s, which is gone", out, pid)
                path.unlink(missing_ok=True)
                continue
            raise io.DataError(
                f"output {out} is in use by process {pid or '?'} on {host or '?'}; wait for it to finish (if that "
                f"process is gone, delete {path})"
            ) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def check_output_apart_from_inputs(config: StageConfig) -> None:
    """An output that is an input, or inside one, or holds one, would delete or mix up the input: refused even
    with --force."""
    out = config.output.resolve()
    for source in input_paths(config):
        path = source.resolve()
        if path == out or out in path.parents or path in out.parents:
            raise io.DataError(
                f"output {config.output} overlaps input {source}: a stage must write to a folder apart from its "
                "inputs; choose another output"
            )


def input_sources(config: StageConfig) -> list[DataSource]:
    """Every data input a config names (`input`, `inputs`, a training stage's sources)."""
    found = []
    for name in type(config).model_fields:
        value = getattr(config, name)
        found += [
            source for source in (value if isinstance(value, list) else [value]) if isinstance(source, DataSource)
        ]
    return found


def input_paths(config: StageConfig) -> list[Path]:
    """Local paths of every data input a config names (a glob counts as its fixed leading folder)."""
    paths = []
    for source in input_sources(config):
        if source.path is not None:
            text = str(source.path)
            cut = min((text.index(c) for c in "*?[" if c in text), default=None)
            paths.append(Path(text[:cut]).parent if cut is not None else source.path)
    return paths


def prepare_output(config: StageConfig, fingerprint: str | None, force: bool) -> bool:
    """Check the output folder; return True when the stage already finished with this config and input."""
    out = config.output
    wanted = run_hash(config, fingerprint)
    if out.exists() and not out.is_dir():
        raise io.DataError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(path.name not in BOOKKEEPING for path in out.iterdir()):
        saved_path = out / io.CONFIG
        if not saved_path.is_file():
            raise io.DataError(
                f"output folder {out} is not empty and holds no ScaleQuest stage output; choose another output"
            )
        saved = yaml.safe_load(saved_path.read_text()) or {}
        if saved.get("stage") != config.stage:
            raise io.DataError(
                f"output folder {out} holds the output of stage {saved.get('stage')!r}, not {config.stage!r}; choose "
                "another output"
            )
        same = saved.get("run_hash") == wanted
        if same and io.read_manifest(out) is not None and not force:
            return True
        started_work = any(path.name not in (io.CONFIG, *BOOKKEEPING) for path in out.iterdir())
        if not same and started_work and not force:
            raise io.DataError(
                f"output folder {out} holds a {config.stage} run with another config, input or model; pass --force to "
                "start over, or choose another output"
            )
        if force:
            for path in out.iterdir():
                if path.name not in BOOKKEEPING:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    io.remove_temporary_files(out)
    (out / io.MANIFEST).unlink(missing_ok=True)
    resolved = {"stage": config.stage, "run_hash": wanted, "config": config.model_dump(mode="json")}
    io.atomic_write_text(out / io.CONFIG, yaml.safe_dump(resolved, sort_keys=False))
    return False


def check_input_finished(config: StageConfig) -> None:
    """An input folder whose stage never finished would silently give a partial dataset (or train on one): name
    that stage. Row-wise and training stages alike."""
    for source in input_sources(config):
        folder = io.stage_folder(source)
        if folder is not None and io.read_manifest(folder) is None:
            saved = yaml.safe_load((folder / io.CONFIG).read_text()) or {}
            raise io.DataError(
                f"input {source} is the output of stage {saved.get('stage')!r}, which has not finished; rerun that "
                "stage first"
            )


def run_stage(stage: RowStage, force: bool = False) -> dict[str, Any]:
    """Run a row-wise stage to completion (resuming finished shards) and return its manifest."""
    config = stage.config
    stage.force = force
    check_output_apart_from_inputs(config)
    check_input_finished(config)
    for name in type(config).model_fields:  # a missing model, tokenizer or API key fails before any output
        if isinstance(engine := getattr(config, name), ENGINE_TYPES):
            engine.check()
    stage.check()
    if config.executor.kind == "ray":
        from scalequest.executors.ray import check_cluster

        check_cluster(stage)  # an unreachable cluster or too few GPUs fails before anything is written
    fingerprint = stage.input_fingerprint()
    rows_in_total = stage.count_input_rows()
    with output_lock(config.output):
        return run_locked(stage, fingerprint, rows_in_total, force)


def run_locked(stage: RowStage, fingerprint: str | None, rows_in_total: int, force: bool) -> dict[str, Any]:
    config, out = stage.config, stage.config.output
    started = time.time()
    if prepare_output(config, fingerprint, force):
        # A finished output is left as it is, log.txt included: the line goes to the console only.
        log.info("%s: already finished in %s (same config and input); pass --force to redo", config.stage, out)
        manifest = io.read_manifest(out)
        stage.after_finish(manifest)
        return manifest
    with progress.stage_log(out, config.stage):
        return run_pending(stage, fingerprint, rows_in_total, started)


def run_pending(stage: RowStage, fingerprint: str | None, rows_in_total: int, started: float) -> dict[str, Any]:
    """Run the shards that still need work, settle failed rows, write the manifest; logged to OUTPUT/log.txt."""
    config, out = stage.config, stage.config.output
    rows_done, removed_done, shards_done = done_counts(out)
    partial = len(list((out / io.PARTIAL_DIR).glob("*.json")))
    if shards_done or partial:
        progress.note(
            log,
            "%s: resuming in %s: %d of %d input rows done in %d finished shards, skipping those%s",
            config.stage,
            out,
            rows_done,
            rows_in_total,
            shards_done,
            f"; retrying the failed rows of {partial} shards" if partial else "",
        )
    else:
        progress.note(log, "%s: started on %d input rows -> %s", config.stage, rows_in_total, out)
    if rows_in_total == 0:
        log.warning("%s: the input holds no rows; writing an empty output", config.stage)

    stage.prepare()
    pending = (shard for shard in stage.input_shards() if not io.shard_path(out, shard.index).is_file())
    if config.executor.kind == "ray":
        from scalequest.executors.ray import run_ray as execute
    else:
        from scalequest.executors.local import run_local as execute
    execute(stage, pending, out, total_rows=rows_in_total, done_rows=rows_done, done_removed=removed_done)
    settle_failed_rows(stage, rows_in_total)
    if not any(out.glob(io.SHARD_GLOB)):  # no input rows: one empty shard keeps the output readable downstream
        write_shard(out, Shard(0, []), ShardResult(rows=[]), 0.0)
    manifest = build_manifest(stage, fingerprint, started)
    io.atomic_write_text(out / io.MANIFEST, json.dumps(manifest, indent=2))
    progress.note(
        log,
        "%s: finished: %d rows in -> %d out, %d removed, %d tokens out, %.1fs this run",
        config.stage,
        manifest["rows_in"],
        manifest["rows_out"],
        sum(manifest["dropped"].values()),
        manifest["tokens_out"],
        manifest["last_run_seconds"],
    )
    stage.after_finish(manifest)
    return manifest


class StageIncomplete(RuntimeError):
    """Rows failed for good (after the engine's retries), more than `max_failed_fraction` allows: the stage
    wrote what succeeded but no manifest; a rerun retries only the failed rows."""


def settle_failed_rows(stage: RowStage, rows_in_total: int) -> None:
    """Raise StageIncomplete while shards are pending; or, within `max_failed_fraction`, write the shards with
    their failed rows removed (reason `failed`) so that the stage can finish."""
    config, out = stage.config, stage.config.output
    partial = sorted(p for p in (out / io.PARTIAL_DIR).glob("*.json") if not io.shard_path(out, int(p.stem)).is_file())
    pending = [shard for shard in stage.input_shards() if not io.shard_path(out, shard.index).is_file()]
    if not pending:
        return
    saved = {int(path.stem): read_partial(out, int(path.stem)) for path in partial}
    failed = [row for result, _ in saved.values() for row in result.failed]
    untried = sum(len(shard.rows) for shard in pending if shard.index not in saved)
    if untried or len(failed) > config.max_failed_fraction * rows_in_total:
        reasons = Counter(row["reason"] for row in failed).most_common()
        because = "; ".join(f"{reason}: {count}" for reason, count in reasons[:3])
        skipped = f", {untried} not tried after a shard in which every request failed" if untried else ""
        raise StageIncomplete(
            f"{config.stage}: {len(failed)} of {rows_in_total} rows failed ({because}){skipped}; output {out} holds "
            f"what succeeded, rerun to retry them (or raise max_failed_fraction={config.max_failed_fraction:g} to "
            "accept the loss)"
        )
    log.warning("%s: %d of %d rows failed; accepted by max_failed_fraction", config.stage, len(failed), rows_in_total)
    for shard in pending:
        result, seconds = saved[shard.index]
        for row in result.failed:
            result.remove(row["row"], "failed", {"error": row["reason"]})
        result.failed = []
        write_shard(out, shard, result, seconds, keep_removed=config.keep_removed)


def run_row_stage(stage_class: type[RowStage], config: StageConfig, force: bool = False) -> dict[str, Any]:
    """`run_stage` for a stage class and its config: how the pipeline and the tests start a row-wise stage."""
    return run_stage(stage_class(config), force=force)


def done_counts(out: Path) -> tuple[int, int, int]:
    """(input rows, rows removed, shards) of the shards finished in `out`: where a resumed run starts."""
    rows = removed = shards = 0
    for path in finished_stats(out):
        stats = json.loads(path.read_text())
        rows, removed, shards = rows + stats["rows_in"], removed + sum(stats["dropped"].values()), shards + 1
    return rows, removed, shards


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
        **({"removed": f"{io.REMOVED_DIR}/shard-*.jsonl"} if any((out / io.REMOVED_DIR).glob(io.SHARD_GLOB)) else {}),
        "models": model_provenance(config),
        "gpu_hours": round(totals["gpu_seconds"] / 3600, 6),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
        **stage.finalize(),
    }
