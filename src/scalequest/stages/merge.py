"""Merge several datasets into one (e.g. the questions of the paper's two generators).

The rows of every input are written in order, input after input, unchanged but for three fields:

- `source`: the input the row came from (as written in `inputs`), unless the row already names one (a merge
  of merges keeps the first source);
- `generator`: kept; a row without one gets the generator recorded in its input's manifest (or in the manifest
  of the stage output that one read, and so on up the chain), when a manifest records one;
- `id`: kept when no other input holds the same id; an id found in several inputs becomes `inN-ID` in each,
  N being the input's place in `inputs` (from 0), so every id of the output is unique and the same inputs
  always give the same ids. Ids repeated within one input are refused.

Every input must be finished (an earlier stage's output with its manifest, or plain data files); the output
is redone when any input changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from scalequest import io
from scalequest.config import DataSource, ShardedStageConfig
from scalequest.stage import RowStage, Shard, ShardResult, check_id

# Manifests followed upward (a manifest's `input`) when looking for the generator of an input's rows.
MAX_CHAIN = 32


class MergeConfig(ShardedStageConfig):
    """Merge the rows of several inputs (stage outputs or files) into one dataset, keeping each row's source
    and generator."""

    stage = "merge"

    inputs: list[DataSource] = Field(
        ...,
        min_length=2,
        description="Inputs to merge, in order (at least 2): paths, stage outputs, {bundled: NAME} or {hub: ID}; on "
        "the command line inputs=[runs/a,runs/b].",
    )


def id_tag(index: int) -> str:
    """What an id found in several inputs is prefixed with in input `index`."""
    return f"in{index}-"


def manifest_generator(source: DataSource) -> str | None:
    """The generator the manifest of `source` records, or that of the stage output it read, and so on."""
    folder = io.stage_folder(source)
    for _ in range(MAX_CHAIN):
        if folder is None:
            return None
        manifest = io.read_manifest(folder) or {}
        if manifest.get("generator"):
            return manifest["generator"]
        upstream = manifest.get("input")
        folder = io.stage_folder(Path(upstream)) if upstream else None
    return None


class Merge(RowStage):
    config: MergeConfig

    def check(self) -> None:
        # The runner refuses unfinished inputs (check_input_finished looks at every data source of a config).
        inputs = self.config.inputs
        for index, source in enumerate(inputs):
            earlier = [i for i, other in enumerate(inputs[:index]) if other == source]
            if earlier:
                raise io.DataError(f"merge: inputs[{index}] ({source}) repeats inputs[{earlier[0]}]; name each once")

    def input_fingerprint(self) -> str | None:
        """Every input's fingerprint, in order: the output is redone when any input changes."""
        digest = hashlib.sha256()
        for source in self.config.inputs:
            digest.update(io.input_fingerprint(source).encode() + b"\n")
        return digest.hexdigest()[:16]

    def count_input_rows(self) -> int:
        """Read every input once: ids repeated within an input are refused, and ids shared between inputs are
        found (they are prefixed)."""
        first_input: dict[Any, int] = {}  # id -> the first input holding it
        shared: set = set()
        self.rows_per_input = []
        for index, source in enumerate(self.config.inputs):
            here: set = set()
            for where, row in io.located_rows(source):
                row_id = row["id"]
                check_id(row_id, f"{where}: id")
                if row_id in here:
                    raise io.DataError(f"{where}: duplicate id {row_id!r}; ids must be unique within an input")
                here.add(row_id)
                if first_input.setdefault(row_id, index) != index:
                    shared.add(row_id)
            self.rows_per_input.append(len(here))
        for row_id in shared:
            taken = [f"{id_tag(i)}{row_id}" for i in range(len(self.config.inputs))]
            taken = [new_id for new_id in taken if new_id in first_input]
            if taken:
                raise io.DataError(
                    f"merge: id {row_id!r} is in several inputs, and its prefixed form {taken[0]!r} is an id of an "
                    "input already; rename the ids of one input"
                )
        self.shared_ids = shared
        return sum(self.rows_per_input)

    def input_rows(self) -> Iterator[dict]:
        if not hasattr(self, "shared_ids"):
            self.count_input_rows()
        for index, source in enumerate(self.config.inputs):
            generator = manifest_generator(source)
            for row in io.read_rows(source):
                if row["id"] in self.shared_ids:
                    row["id"] = f"{id_tag(index)}{row['id']}"
                row.setdefault("source", str(source))
                if generator is not None:
                    row.setdefault("generator", generator)
                yield row

    def process(self, shard: Shard) -> ShardResult:
        return ShardResult(rows=list(shard.rows))  # the rows were merged as the shards were cut

    def finalize(self) -> dict:
        if not hasattr(self, "rows_per_input"):
            self.count_input_rows()
        inputs = []
        for source, rows in zip(self.config.inputs, self.rows_per_input):
            folder = io.stage_folder(source)
            stage = ((io.read_manifest(folder) if folder else None) or {}).get("stage")
            inputs.append({"input": str(source), "stage": stage, "generator": manifest_generator(source), "rows": rows})
        # Each id found in several inputs was prefixed in every input holding it.
        return {"inputs": inputs, "shared_ids": len(self.shared_ids)}
