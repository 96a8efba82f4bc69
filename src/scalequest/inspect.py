"""`scalequest inspect OUTPUT`: browse the rows of any stage output in the terminal.

    scalequest inspect runs/q-en                         # what the stage did, then its first 5 kept rows
    scalequest inspect runs/q-en --sample 10 --seed 1    # 10 kept rows at random (the same 10 for the same seed)
    scalequest inspect runs/q-en --removed non_ascii     # rows removed for one reason, with the evidence
    scalequest inspect runs/q-en --removed all           # every removed row
    scalequest inspect runs/q-en --id q-3f2a-17          # one row, kept or removed
    scalequest inspect runs/q-en --removed all --json --limit 0   # every removed row as JSON lines, for scripts

Kept rows are the output's shards (`shard-*.jsonl`); removed rows are `removed/shard-*.jsonl`, each
{id, reason, evidence, row}. Reached as `scalequest.inspect` only: it never shadows the standard library's
`inspect`, which absolute imports elsewhere still resolve to.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from scalequest import io

ALL = "all"


def stage_output(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder and what it says about itself: its manifest, else its saved config (an unfinished stage)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise io.DataError(f"{folder} does not exist or is not a folder")
    manifest = io.read_manifest(folder)
    if manifest is not None:
        return folder, manifest
    if not (folder / io.CONFIG).is_file():
        raise io.DataError(f"{folder} is not a stage output (no {io.CONFIG} and no {io.MANIFEST})")
    saved = yaml.safe_load((folder / io.CONFIG).read_text()) or {}
    return folder, {"stage": saved.get("stage"), "config": saved.get("config") or {}, "unfinished": True}


def kept_rows(folder: Path) -> Iterator[dict]:
    for path in sorted(folder.glob(io.SHARD_GLOB)):
        yield from io.read_file(path)


def removed_reasons(folder: Path) -> Counter:
    return Counter(entry.get("reason") for entry in io.read_removed(folder))


def choose(rows: Iterable[dict], limit: int, sample: int | None, seed: int) -> list[dict]:
    """The first `limit` rows (0: all), or `sample` rows at random (reservoir sampling, in dataset order)."""
    if sample is None:
        chosen = []
        for row in rows:
            if limit and len(chosen) >= limit:
                break
            chosen.append(row)
        return chosen
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict]] = []
    for position, row in enumerate(rows):
        if len(reservoir) < sample:
            reservoir.append((position, row))
        else:
            slot = rng.randrange(position + 1)
            if slot < sample:
                reservoir[slot] = (position, row)
    return [row for _, row in sorted(reservoir, key=lambda pair: pair[0])]


def find_id(folder: Path, row_id: str, reason: str | None) -> list[dict]:
    """Every entry with this id: {status: kept, row} and {status: removed, reason, evidence, row}."""
    found = []
    if reason is None:
        found += [{"status": "kept", "row": row} for row in kept_rows(folder) if str(row.get("id")) == row_id]
    for entry in io.read_removed(folder, None if reason in (None, ALL) else reason):
        if str(entry.get("id")) == row_id:
            found.append({"status": "removed", **entry})
    return found


def check_reason(folder: Path, reason: str, reasons: Counter) -> None:
    if reason != ALL and reason not in reasons:
        known = ", ".join(f"{name} ({count})" for name, count in sorted(reasons.items())) or "none: nothing removed"
        raise io.DataError(f"{folder} has no rows removed for {reason!r} (reasons: {known}; or: {ALL})")


def main(args) -> None:
    """The CLI's `inspect` command (argparse namespace from cli.build_parser): print the selected rows of a stage
    output, as rich panels or (--json) JSON lines."""
    removed, row_id, sample, limit, seed = args.removed, args.id, args.sample, args.limit, args.seed
    if sample is not None and sample < 1:
        raise io.DataError(f"--sample must be at least 1 (got {sample})")
    if limit < 0:
        raise io.DataError(f"--limit must be 0 (all) or more (got {limit})")
    folder, manifest = stage_output(args.output)
    has_shards = any(folder.glob(io.SHARD_GLOB))
    reasons = removed_reasons(folder)
    if not has_shards and not reasons and manifest.get("steps") is not None:
        raise io.DataError(
            f"{folder} is a model (the output of training stage {manifest.get('stage')!r}), not rows; "
            "inspect the stage that produced its data instead"
        )
    if removed is not None:
        check_reason(folder, removed, reasons)
    if row_id is not None:
        entries = find_id(folder, row_id, removed)
        if not entries:
            where = "kept or removed" if removed is None else f"removed for {removed!r}"
            raise io.DataError(f"{folder} has no row with id {row_id!r} ({where})")
    elif removed is not None:
        wanted = None if removed == ALL else removed
        entries = [
            {"status": "removed", **entry} for entry in choose(io.read_removed(folder, wanted), limit, sample, seed)
        ]
    else:
        entries = [{"status": "kept", "row": row} for row in choose(kept_rows(folder), limit, sample, seed)]
    if args.json:
        for entry in entries:
            # Kept rows as stored; removed rows as stored in removed/ ({id, reason, evidence, row}).
            shown = entry["row"] if entry["status"] == "kept" else {k: v for k, v in entry.items() if k != "status"}
            sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
        return
    render(folder, manifest, reasons, entries, removed, row_id, sample, seed)


# ----------------------------------------------------------------------------------------------
# Rendering with rich
# ----------------------------------------------------------------------------------------------


def value_text(value: Any):
    """A field's value as rich Text: strings as they are (never read as markup), anything else as JSON."""
    from rich.text import Text

    if isinstance(value, str):
        return Text(value, overflow="fold")
    return Text(json.dumps(value, ensure_ascii=False, indent=2 if isinstance(value, dict) else None), overflow="fold")


def fields_table(row: dict):
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(ratio=1, overflow="fold")
    for key, value in row.items():
        table.add_row(Text(str(key)), value_text(value))
    return table


def entry_panel(entry: dict):
    from rich.console import Group
    from rich.panel import Panel
    from rich.rule import Rule
    from rich.text import Text

    row = entry.get("row") or {}
    row_id = entry.get("id", row.get("id"))
    if entry["status"] == "kept":
        return Panel(fields_table(row), title=Text(f"{row_id}  kept"), title_align="left", border_style="green")
    parts = [fields_table({"reason": entry.get("reason"), "evidence": entry.get("evidence")})]
    parts += [Rule("row", style="dim"), fields_table(row)]
    title = Text(f"{row_id}  removed: {entry.get('reason')}")
    return Panel(Group(*parts), title=title, title_align="left", border_style="red")


def summary_table(folder: Path, manifest: dict, reasons: Counter):
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    state = "not finished" if manifest.get("unfinished") else "finished"
    kept = manifest.get("rows_out")
    rows = [
        ("stage", f"{manifest.get('stage')} ({state})"),
        ("folder", str(folder)),
        ("input", None if manifest.get("input") is None else str(manifest["input"])),
        ("rows in", None if manifest.get("rows_in") is None else f"{manifest['rows_in']:,}"),
        ("rows kept", "-" if kept is None else f"{kept:,}"),
        ("rows removed", ", ".join(f"{name}: {count:,}" for name, count in sorted(reasons.items())) or "none"),
    ]
    for label, value in rows:
        if value is not None:
            table.add_row(label, Text(value))
    return table


def render(
    folder: Path,
    manifest: dict,
    reasons: Counter,
    entries: list[dict],
    removed: str | None,
    row_id: str | None,
    sample: int | None,
    seed: int,
) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    console.print(summary_table(folder, manifest, reasons))
    if row_id is not None:
        what = f"row {row_id!r}: {len(entries)} found"
    else:
        kind = "kept rows" if removed is None else ("removed rows" if removed == ALL else f"rows removed: {removed}")
        how = f"{len(entries)} at random (seed {seed})" if sample is not None else f"the first {len(entries)}"
        what = f"{kind}, {how}" if entries else f"{kind}: none"
    console.rule(Text(what), style="dim")
    for entry in entries:
        console.print(entry_panel(entry))
