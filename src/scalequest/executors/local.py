"""Run a row-wise stage's pending shards one after another in this process."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from scalequest.progress import StageView
from scalequest.stage import RowStage, Shard, run_shard


def run_local(
    stage: RowStage, shards: Iterable[Shard], out: Path, total_rows: int, done_rows: int = 0, done_removed: int = 0
) -> None:
    """`done_rows` and `done_removed`: what earlier runs finished (a resume), where the progress view starts."""
    view = StageView(stage.config.stage, total_rows, done_rows, done_removed, enabled=stage.config.progress)
    ready = False
    with view:
        try:
            for shard in shards:
                if not ready:  # load models only when some shard still needs work
                    stage.setup()
                    ready = True
                    view.ready()  # the rates count processing, not loading
                stats = run_shard(stage, shard, out)
                view.shard_done(stats)
                if shard.rows and stats["failed"] == len(shard.rows):
                    break  # nothing got through (a server down?): leave the rest pending, the runner says so
        finally:
            if ready:
                stage.teardown()
