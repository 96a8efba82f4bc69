"""Run a row-wise stage's pending shards one after another in this process."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from scalequest.stage import RowStage, Shard, run_shard


def run_local(stage: RowStage, shards: Iterable[Shard], out: Path, total_rows: int, done_rows: int = 0) -> None:
    bar = tqdm(
        total=total_rows,
        initial=done_rows,
        desc=stage.config.stage,
        unit="row",
        disable=not stage.config.progress,
        dynamic_ncols=True,
    )
    tokens = 0
    ready = False
    try:
        for shard in shards:
            if not ready:  # load models only when some shard still needs work
                stage.setup()
                ready = True
            stats = run_shard(stage, shard, out)
            tokens += stats["tokens_out"]
            bar.update(len(shard.rows))
            if shard.rows and stats["failed"] == len(shard.rows):
                break  # nothing got through (a server down?): leave the rest pending, the runner says so
            bar.set_postfix(tok_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):.1f}", refresh=False)
    finally:
        bar.close()
        if ready:
            stage.teardown()
