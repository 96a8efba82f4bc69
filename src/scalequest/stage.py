"""The stage interface and the shard types: what a row-wise stage is, and how a finished shard is written.

A row-wise stage is a `RowStage`: `setup()` loads what it needs once per worker (an engine, a model),
`process(shard)` turns one shard of rows into output rows plus counts. The executors run it over shards
and store each with `write_shard`; the runner, above them, picks the shards that still need work and
writes the manifest. This module sits below both, so that dependencies point one way.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalequest import io
from scalequest.config import HFEngineConfig, RowStageConfig, StageConfig, VLLMEngineConfig


@dataclass
class Shard:
    """One numbered slice of a stage's input rows; shard i of the input becomes shard i of the output."""

    index: int
    rows: list[dict]


@dataclass
class ShardResult:
    """What `RowStage.process` returns for one shard; `write_shard` stores it."""

    rows: list[dict]
    dropped: Counter = field(default_factory=Counter)  # reason -> rows removed
    tokens_in: int = 0
    tokens_out: int = 0
    counts: Counter = field(default_factory=Counter)  # any other per-stage tallies
    removed: list[dict] = field(default_factory=list)  # removed rows, {id, reason, evidence, row}: OUTPUT/removed/
    # Input rows whose engine calls failed for good, {id, reason, row}: pending, retried by the next run.
    failed: list[dict] = field(default_factory=list)
    # The input id each output row came from, where the stage records it with `keep` (stages that can `fail`
    # must): a retry's rows are merged in input order by it.
    sources: list[Any] = field(default_factory=list)

    def keep(self, out_row: dict, source: dict) -> None:
        """Add `out_row`, made from the input row `source`."""
        self.rows.append(out_row)
        self.sources.append(source.get("id"))

    def remove(self, row: dict, reason: str, evidence: Any = None) -> None:
        """Drop `row` for `reason`, keeping it with the evidence for the decision (a judge's output, a score,
        the matching n-gram) so that what a filter removed can be inspected, not only counted."""
        self.dropped[reason] += 1
        self.removed.append({"id": row.get("id"), "reason": reason, "evidence": evidence, "row": row})

    def fail(self, row: dict, reason: str) -> None:
        """`row` could not be processed (its engine request failed after retries): it is neither kept nor
        removed, and the shard stays pending until a rerun processes it."""
        self.failed.append({"id": row.get("id"), "reason": reason, "row": row})

    def generated(self, engine, rows: list[dict], prompts: list, params) -> list[tuple[dict, list]]:
        """`engine`'s completions of `prompts` (one per row), as (row, completions) for the rows that got some;
        a row whose request failed for good is recorded with `fail` (pending for a rerun: a failed request is not
        a wrong answer). Counts the prompt tokens once per row and every completion's tokens."""
        answered = []
        for index, (row, completions) in enumerate(zip(rows, engine.generate(prompts, params))):
            if not completions:
                self.fail(row, engine.failure(index))
                continue
            self.tokens_in += completions[0].prompt_tokens
            self.tokens_out += sum(c.completion_tokens for c in completions)
            answered.append((row, completions))
        return answered

    def merged(self, retry: "ShardResult", shard: Shard) -> "ShardResult":
        """This earlier result with `retry` (the rows that had failed, processed again), in input order."""
        position = {row.get("id"): i for i, row in enumerate(shard.rows)}
        if len(self.sources) != len(self.rows) or len(retry.sources) != len(retry.rows):
            raise RuntimeError("a stage that fails rows must add its rows with ShardResult.keep")
        kept = sorted(
            zip(self.sources + retry.sources, self.rows + retry.rows), key=lambda pair: position.get(pair[0], -1)
        )
        return ShardResult(
            rows=[row for _, row in kept],
            sources=[source for source, _ in kept],
            dropped=self.dropped + retry.dropped,
            tokens_in=self.tokens_in + retry.tokens_in,
            tokens_out=self.tokens_out + retry.tokens_out,
            counts=self.counts + retry.counts,
            removed=sorted(self.removed + retry.removed, key=lambda r: position.get(r["id"], -1)),
            failed=retry.failed,
        )


def check_id(value: Any, what: str) -> None:
    """An id is a non-empty string or an integer (a list or a float would not survive JSON and dedup alike)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise io.DataError(f"{what} must be a non-empty string or an integer, not {value!r}")


class RowStage(ABC):
    """Base of every row-wise stage. Subclasses set `config` and implement `process`."""

    force = False  # this run was asked to redo finished work (--force); the runner sets it

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
        """Text fields every input row must have (strings); checked before any output is written."""
        return ()

    def gpus_per_replica(self) -> int:
        """GPUs one copy of this stage's models takes on a cluster with GPUs (the Ray executor sizes its
        actors by it): the largest tensor-parallel size among the local engines in the config."""
        engines = [getattr(self.config, name) for name in type(self.config).model_fields]
        local = [e for e in engines if isinstance(e, (HFEngineConfig, VLLMEngineConfig))]
        return max((getattr(e, "tensor_parallel_size", 1) for e in local), default=0)

    def count_input_rows(self) -> int:
        """Read the whole input once, so that a corrupt line, a duplicate id or a missing or mistyped field fails
        before any output is written; each is named by file and line."""
        assert isinstance(self.config, RowStageConfig)
        source, required, id_fields = self.config.input, self.required_fields(), self.id_fields()
        seen: set = set()
        count = 0
        for count, (where, row) in enumerate(io.located_rows(source), start=1):
            for name in id_fields:
                if name not in row:
                    raise io.DataError(f"{where}: the row has no field {name!r}")
                check_id(row[name], f"{where}: {name}")
            for name in required:
                if name not in row:
                    raise io.DataError(f"{where}: row {row['id']} has no field {name!r} (fields: {', '.join(row)})")
                if not isinstance(row[name], str):
                    raise io.DataError(
                        f"{where}: row {row['id']}: field {name!r} must be text, not "
                        f"{type(row[name]).__name__} ({str(row[name])[:40]})"
                    )
            if row["id"] in seen:
                first = next(w for w, r in io.located_rows(source) if r["id"] == row["id"])
                raise io.DataError(f"{where}: duplicate id {row['id']!r} (first at {first}); ids must be unique")
            seen.add(row["id"])
        return count

    def id_fields(self) -> tuple[str, ...]:
        """Fields of every input row that hold an id (a non-empty string or an integer); `id` is unique."""
        return ("id",)

    def input_rows(self) -> Iterator[dict]:
        """The rows the shards are cut from."""
        assert isinstance(self.config, RowStageConfig)
        return io.read_rows(self.config.input)

    def input_shards(self) -> Iterator[Shard]:
        """Input rows cut into shards of `shard_size`; shard i of the input becomes shard i of the output."""
        size = self.config.shard_size
        batch: list[dict] = []
        index = 0
        for row in self.input_rows():
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

    def after_finish(self, manifest: dict[str, Any]) -> None:
        """Called by the driver once the manifest exists, also when the stage had already finished (e.g. a push)."""

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


def run_shard(stage: RowStage, shard: Shard, out: Path) -> dict:
    """Process one pending shard and write it; what both executors call for each shard.

    A shard whose earlier run left failed rows (OUTPUT/.partial/) has only those rows processed again,
    merged with what had succeeded: finished rows are never redone, ids and order stay those of one run.
    """
    started = time.time()
    earlier, seconds = read_partial(out, shard.index)
    if earlier is None:
        result = stage.process(shard)
    else:
        retry_ids = {failed["id"] for failed in earlier.failed}
        retry = stage.process(Shard(shard.index, [row for row in shard.rows if row.get("id") in retry_ids]))
        result = earlier.merged(retry, shard)
    return write_shard(out, shard, result, seconds + time.time() - started, stage.devices(), stage.config.keep_removed)


def read_partial(out: Path, index: int) -> tuple[ShardResult | None, float]:
    """The saved result of a shard that had failed rows, and the seconds spent on it so far."""
    path = io.partial_path(out, index)
    if not path.is_file():
        return None, 0.0
    saved = json.loads(path.read_text())
    seconds = saved.pop("seconds")
    saved["dropped"], saved["counts"] = Counter(saved["dropped"]), Counter(saved["counts"])
    return ShardResult(**saved), seconds


def write_shard(
    out: Path,
    shard: Shard,
    result: ShardResult,
    seconds: float,
    devices: tuple[str, int] = ("cpu", 0),
    keep_removed: bool = True,
) -> dict:
    """Removed rows and stats first, then the rows: a shard counts as done only once its rows file is in place.

    A result with failed rows is saved whole under OUTPUT/.partial/ instead, and the shard stays pending.
    Returns the stats with the shard's `index` and its `failed` rows, for the progress view.
    """
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
    if result.failed:
        saved = {name: getattr(result, name) for name in ShardResult.__dataclass_fields__} | {"seconds": seconds}
        io.atomic_write_text(io.partial_path(out, shard.index), json.dumps(saved, ensure_ascii=False))
        return {**stats, "index": shard.index, "failed": len(result.failed)}
    if keep_removed and result.removed:
        io.atomic_write_text(io.removed_path(out, shard.index), io.to_jsonl(result.removed))
    io.atomic_write_text(io.stats_path(out, shard.index), json.dumps(stats))
    io.atomic_write_text(io.shard_path(out, shard.index), io.to_jsonl(result.rows))
    io.partial_path(out, shard.index).unlink(missing_ok=True)
    return {**stats, "index": shard.index, "failed": 0}
