"""Run a row-wise stage's pending shards one after another in this process."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from scalequest.stage import RowStage, Shard, write_shard


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
            started = time.time()
            result = stage.process(shard)
            write_shard(out, shard, result, time.time() - started, stage.devices(), stage.config.keep_removed)
            tokens += result.tokens_out
            bar.update(len(shard.rows))
            bar.set_postfix(tok_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):.1f}", refresh=False)
    finally:
        bar.close()
        if ready:
            stage.teardown()
