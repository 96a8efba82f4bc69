"""The stage interface and the shard types: what a row-wise stage is, and how a finished shard is written.

A row-wise stage is a `RowStage`: `setup()` loads what it needs once per worker (an engine, a model),
`process(shard)` turns one shard of rows into output rows plus counts. The executors run it over shards
and store each with `write_shard`; the runner, above them, picks the shards that still need work and
writes the manifest. This module sits below both, so that dependencies point one way.
"""

from __future__ import annotations

import json
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

    def remove(self, row: dict, reason: str, evidence: Any = None) -> None:
        """Drop `row` for `reason`, keeping it with the evidence for the decision (a judge's output, a score,
        the matching n-gram) so that what a filter removed can be inspected, not only counted."""
        self.dropped[reason] += 1
        self.removed.append({"id": row.get("id"), "reason": reason, "evidence": evidence, "row": row})


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
        """Fields every input row must have; checked before any output is written."""
        return ()

    def gpus_per_replica(self) -> int:
        """GPUs one copy of this stage's models takes on a cluster with GPUs (the Ray executor sizes its
        actors by it): the largest tensor-parallel size among the local engines in the config."""
        engines = [getattr(self.config, name) for name in type(self.config).model_fields]
        local = [e for e in engines if isinstance(e, (HFEngineConfig, VLLMEngineConfig))]
        return max((getattr(e, "tensor_parallel_size", 1) for e in local), default=0)

    def count_input_rows(self) -> int:
        """Read the whole input once, so a corrupt line or a missing field fails before any output."""
        assert isinstance(self.config, RowStageConfig)
        required = self.required_fields()
        count = 0
        for count, row in enumerate(io.read_rows(self.config.input), start=1):
            missing = [name for name in required if name not in row]
            if missing:
                raise io.DataError(
                    f"input {self.config.input}: row {row['id']} has no field {missing[0]!r} (fields: {', '.join(row)})"
                )
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


def write_shard(
    out: Path,
    shard: Shard,
    result: ShardResult,
    seconds: float,
    devices: tuple[str, int] = ("cpu", 0),
    keep_removed: bool = True,
) -> dict:
    """Removed rows and stats first, then the rows: a shard counts as done only once its rows file is in place."""
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
    if keep_removed and result.removed:
        io.atomic_write_text(io.removed_path(out, shard.index), io.to_jsonl(result.removed))
    io.atomic_write_text(io.stats_path(out, shard.index), json.dumps(stats))
    io.atomic_write_text(io.shard_path(out, shard.index), io.to_jsonl(result.rows))
    return stats
