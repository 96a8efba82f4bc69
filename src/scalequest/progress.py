"""One progress view per stage, in place of every library's own bars; and each stage's OUTPUT/log.txt.

While a stage runs, one line shows where it stands (redrawn in place on a terminal, printed once at the end
elsewhere):

    [2/5] filter-language ━━━━━━━━━━━━━━━━━━━━ 1200/5000 rows · 310.2 rows/s · 0 tok/s · ETA 0:00:12 · removed 87
    [6/8] sft ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 40/100 steps · 1.3 steps/s · loss 0.7342 · ETA 0:00:46

The executors report each finished shard's stats to it (`StageView.shard_done`), a training stage its
trainer's steps and logs; `pipeline.run_pipeline` says which step of the run the stage is (`pipeline_step`),
a single stage command shows the stage alone. While a stage runs (`progress: false` included) the engines'
per-batch bars (`inner_bars_hidden`) and those of huggingface_hub, transformers and datasets are off, and log
lines print above the view rather than through it.

`stage_log` writes the stage's log lines, timestamped, to OUTPUT/log.txt, appending: a resumed run adds to it.
It sits below the executors: they import it, it imports nothing of scalequest's.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOG = "log.txt"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

CONSOLE = None  # the rich Console the view draws on; None: a new one on stderr (tests set a recording one)

_step: tuple[int, int, str] | None = None  # (number, steps, name) of the pipeline step running now
_stages = 0  # stages running in this process (views open, shown or not)
_worker = False  # this process is a worker of the driver's view (a Ray actor): its inner bars stay off
_showing: "StageView | None" = None  # the view on screen; at most one (rich draws one live display at once)
_log_files: list[logging.Handler] = []  # the log.txt handlers of the stages running now


@contextmanager
def pipeline_step(number: int, steps: int, name: str) -> Iterator[None]:
    """The stage run inside is step `number` of `steps` of a pipeline, named `name` there (COMMAND@TAG)."""
    global _step
    previous, _step = _step, (number, steps, name)
    try:
        yield
    finally:
        _step = previous


def stage_label(stage: str) -> str:
    """`[i/N] NAME` inside a pipeline, the stage's name alone otherwise."""
    if _step is None:
        return stage
    number, steps, name = _step
    return f"[{number}/{steps}] {name if name.partition('@')[0] == stage else stage}"


def inner_bars_hidden() -> bool:
    """True while a stage runs in this process (or this is a Ray worker): the engines draw no bars of their own."""
    return _stages > 0 or _worker


def hide_inner_bars() -> None:
    """For a worker process whose shards the driver's view counts: no engine or library bars, for good."""
    global _worker
    _worker = True
    quiet_library_bars()


def quiet_library_bars() -> list[Callable[[], None]]:
    """Turn off the bars of huggingface_hub (downloads), and of transformers and datasets where loaded (loading
    them would cost seconds); return what turns back on only those that were on."""
    undo: list[Callable[[], None]] = []
    with warnings.catch_warnings():  # each warns instead when an environment variable forces its bars on
        warnings.simplefilter("ignore")
        try:
            from huggingface_hub import utils as hub
        except ImportError:  # pragma: no cover - a dependency of transformers
            hub = None
        if hub is not None and not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()
            undo.append(hub.enable_progress_bars)
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            if transformers_logging.is_progress_bar_enabled():
                transformers_logging.disable_progress_bar()
                undo.append(transformers_logging.enable_progress_bar)
        if "datasets" in sys.modules:
            import datasets

            if datasets.is_progress_bar_enabled():
                datasets.disable_progress_bars()
                undo.append(datasets.enable_progress_bars)
    return undo


def restore_library_bars(undo: list[Callable[[], None]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for turn_on in undo:
            turn_on()


# --- log.txt ---------------------------------------------------------------------------------------------------


@contextmanager
def stage_log(out: Path, stage: str) -> Iterator[None]:
    """Add OUTPUT/log.txt (appended to) to the root logger while `stage` runs inside; a failure is noted there."""
    root = logging.getLogger()
    handler = logging.FileHandler(Path(out) / LOG, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    # Unconfigured logging prints warnings through `logging.lastResort`, but only while no handler exists: keep it.
    fallback = logging.lastResort if not root.handlers and logging.lastResort is not None else None
    if fallback is not None:
        root.addHandler(fallback)
    root.addHandler(handler)
    _log_files.append(handler)
    try:
        yield
    except BaseException as err:
        what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed: {type(err).__name__}: {err}"
        log_to_file(f"{stage}: {what}", logging.ERROR, "scalequest")
        raise
    finally:
        _log_files.remove(handler)
        root.removeHandler(handler)
        if fallback is not None:
            root.removeHandler(fallback)
        handler.close()


def log_to_file(message: str, level: int = logging.INFO, name: str = "scalequest.progress") -> None:
    """A line for log.txt only (one per shard): the console has the view instead."""
    for handler in _log_files:
        handler.handle(logging.LogRecord(name, level, __file__, 0, message, None, None))


def note(logger: logging.Logger, message: str, *args: Any) -> None:
    """An INFO line: to the console and log.txt where logging lets INFO through (as the CLI sets it up), else to
    log.txt alone, so that the log holds a stage's start, resume and finish whatever the logging setup."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(message, *args)
    else:
        log_to_file(message % args if args else message, logging.INFO, logger.name)


# --- the view --------------------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


class StageView:
    """The line of one stage: rows (or a trainer's steps) done of the total, rates, ETA, rows removed so far.

    Use it as a context: inside, inner bars are off and, when `enabled`, the line shows (`enabled=False`, from
    `progress: false`, shows nothing). `done` and `removed` are the counts of earlier runs (resume).
    """

    def __init__(
        self, stage: str, total: int | None, done: int = 0, removed: int = 0, unit: str = "rows", enabled: bool = True
    ):
        self.stage, self.label = stage, stage_label(stage)
        self.total, self.done, self.removed, self.unit, self.enabled = total, done, removed, unit, enabled
        self.counted = 0  # rows (steps) of this run: the rates count these only
        self.tokens = 0
        self.failed = 0
        self.loss: float | None = None
        self.started = time.monotonic()
        self._live = None
        self._streams: list[tuple[logging.StreamHandler, Any]] = []
        self._undo: list[Callable[[], None]] = []

    # -- lifetime

    def __enter__(self) -> "StageView":
        global _stages, _showing
        _stages += 1
        self._undo = quiet_library_bars()
        if self.enabled and _showing is None:
            from rich.console import Console
            from rich.live import Live

            before = sys.stdout, sys.stderr
            self._live = Live(console=CONSOLE or Console(stderr=True), get_renderable=self.render, refresh_per_second=4)
            self._live.start()
            _showing = self
            # On a terminal rich now prints whatever goes to stdout/stderr above the line; log handlers that hold
            # the streams of before would write through it.
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler and handler.stream in before:
                    now = sys.stdout if handler.stream is before[0] else sys.stderr
                    if now is not handler.stream:
                        self._streams.append((handler, handler.setStream(now)))
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info) -> None:
        global _stages, _showing
        try:
            if self._live is not None:
                for handler, stream in self._streams:
                    handler.setStream(stream)
                self._streams = []
                self._live.stop()  # leaves the last state on screen (printed once where it is not a terminal)
                console = self._live.console
                if not console.is_terminal and not console.is_jupyter:  # there rich ends the line itself
                    console.line()
                self._live, _showing = None, None
        finally:
            _stages -= 1
            restore_library_bars(self._undo)
            self._undo = []

    def ready(self) -> None:
        """The work starts now (the models are loaded): the rates count from here."""
        self.started = time.monotonic()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    # -- row-wise stages

    def shard_done(self, stats: dict) -> None:
        """Count one shard's stats (as `stage.run_shard` returns them); a line for log.txt."""
        rows = stats["rows_in"] - stats.get("failed", 0)
        removed = sum(stats.get("dropped", {}).values())
        self.done += rows
        self.counted += rows
        self.removed += removed
        self.tokens += stats.get("tokens_out", 0)
        self.failed += stats.get("failed", 0)
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.get("dropped", {}).items()))
        line = f"{self.stage}: shard {stats.get('index', '?')}: {stats['rows_in']} rows in -> {stats['rows_out']} out"
        line += f", removed {removed} ({reasons})" if removed else ""
        line += f", {stats['failed']} failed (left pending)" if stats.get("failed") else ""
        line += f", {stats['tokens_out']} tokens out" if stats.get("tokens_out") else ""
        line += f", {stats.get('seconds', 0):.1f}s; {self.counts()} done"
        log_to_file(line)
        self.refresh()

    # -- training stages

    def start_steps(self, done: int, total: int | None) -> None:
        """Training begins at step `done` (a resumed checkpoint) of `total`."""
        self.done, self.total, self.counted = done, total, 0
        self.ready()
        self.refresh()

    def step(self, done: int) -> None:
        self.counted += max(0, done - self.done)
        self.done = done
        self.refresh()

    def logged(self, logs: dict[str, Any], logger: logging.Logger) -> None:
        """A trainer's log entry (loss, learning rate, ...): one line to the console and log.txt."""
        logs = {key: value for key, value in logs.items() if key != "total_flos"}
        if isinstance(logs.get("loss"), (int, float)):
            self.loss = float(logs["loss"])
        values = ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in logs.items()
        )
        step = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        note(logger, "%s: step %s: %s (ETA %s)", self.stage, step, values, duration(self.eta()))
        self.refresh()

    # -- the line

    def rates(self) -> tuple[float, float]:
        """(rows or steps per second, tokens per second) of this run."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.counted / elapsed, self.tokens / elapsed

    def eta(self) -> float | None:
        per_second = self.rates()[0]
        if self.total is None or per_second <= 0:
            return None
        return max(0, self.total - self.done) / per_second

    def counts(self) -> str:
        return f"{self.done}/{self.total} {self.unit}" if self.total is not None else f"{self.done} {self.unit}"

    def stats(self) -> str:
        """What follows the bar: counts, rates, ETA, and rows removed (row-wise) or the last loss (training)."""
        per_second, tokens = self.rates()
        parts = [self.counts(), f"{rate(per_second)} {self.unit}/s"]
        if self.unit == "rows":
            parts.append(f"{tokens:.0f} tok/s")
        elif self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        parts.append(f"ETA {duration(self.eta())}")
        if self.unit == "rows":
            parts.append(f"removed {self.removed}" + (f", {self.failed} failed" if self.failed else ""))
        return " · ".join(parts)

    def text(self) -> str:
        """The line without its bar."""
        return f"{self.label} {self.stats()}"

    def render(self):
        """The label, a bar as wide as the line leaves room for (none on a narrow terminal), then `stats()`."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        stats = self.stats()
        width = self._live.console.width if self._live is not None else 200
        room = min(30, width - len(self.label) - len(stats) - 2)
        cells = [Text(self.label, style="bold", no_wrap=True)]
        if room >= 5:
            if self.total is None:  # a trainer before it knows its steps
                cells.append(ProgressBar(total=None, width=room, pulse=True))
            else:  # an empty input is complete
                cells.append(
                    ProgressBar(total=max(self.total, 1), completed=self.done if self.total else 1, width=room)
                )
        cells.append(Text(stats, no_wrap=True, overflow="ellipsis"))
        grid = Table.grid(padding=(0, 1))
        grid.add_row(*cells)
        return grid
