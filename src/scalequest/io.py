"""Datasets between stages: sharded JSONL with a stable `id` per row, atomic writes, manifest last.

An output folder looks like:

    shard-00000.jsonl ...   rows; each file appears only once complete (written to a temp name, renamed)
    .stats/00000.json ...   per-shard counts, written just before the shard, so resumed runs keep them
    config.yaml             the resolved config, written when the stage starts
    manifest.json           written last; its presence means the stage finished
    log.txt                 the stage's timestamped log, appended to by every run (no data: never read as rows)

Load any output with `datasets.load_dataset("json", data_files="OUTPUT/shard-*.jsonl")`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalequest.config import DataSource

SHARD_GLOB = "shard-*.jsonl"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
STATS_DIR = ".stats"
REMOVED_DIR = "removed"
PARTIAL_DIR = ".partial"


class DataError(ValueError):
    """Bad input data or output folder, reported as one line."""


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.jsonl"


def removed_path(folder: Path, index: int) -> Path:
    """Rows a stage removed from shard `index`, each with its reason and evidence."""
    return folder / REMOVED_DIR / f"shard-{index:05d}.jsonl"


def stats_path(folder: Path, index: int) -> Path:
    return folder / STATS_DIR / f"{index:05d}.json"


def partial_path(folder: Path, index: int) -> Path:
    """What succeeded of shard `index` while some of its rows failed: the shard stays pending until they succeed."""
    return folder / PARTIAL_DIR / f"{index:05d}.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def remove_temporary_files(folder: Path) -> None:
    """Leftovers of a killed run: temporary files, never complete, and the partial result of a shard that was
    written in full after all (a kill between the two writes); always safe to delete."""
    for tmp in [
        *folder.glob(".*.tmp-*"),
        *(folder / STATS_DIR).glob(".*.tmp-*"),
        *(folder / REMOVED_DIR).glob(".*.tmp-*"),
        *(folder / PARTIAL_DIR).glob(".*.tmp-*"),
    ]:
        tmp.unlink(missing_ok=True)
    for partial in (folder / PARTIAL_DIR).glob("*.json"):
        if shard_path(folder, int(partial.stem)).is_file():
            partial.unlink()


BUNDLED_DIR = Path(__file__).with_name("data")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def as_source(source: "DataSource | Path | str") -> "DataSource":
    from scalequest.config import DataSource

    return source if isinstance(source, DataSource) else DataSource(path=source)


def bundled_file(name: str) -> Path:
    return BUNDLED_DIR / f"{name}.jsonl"


def input_files(source: Path) -> list[Path]:
    """The data files of an input: a stage output folder, a folder of JSONL/Parquet files, a glob, or one file."""
    if any(char in str(source) for char in "*?["):
        matched = sorted(
            p for p in map(Path, glob.glob(str(source), recursive=True)) if p.is_file() and p.suffix in DATA_SUFFIXES
        )
        if not matched:
            raise DataError(f"input {source} matches no .jsonl, .json or .parquet file")
        return matched
    if not source.exists():
        raise DataError(f"input {source} does not exist")
    if source.is_file():
        return [source]
    files = sorted(source.glob(SHARD_GLOB)) or sorted(
        p for p in source.iterdir() if p.suffix in DATA_SUFFIXES and p.name != MANIFEST
    )
    if not files:
        raise DataError(f"input folder {source} holds no .jsonl, .json or .parquet data files")
    return files


def read_file(path: Path) -> Iterator[dict]:
    """Rows of one JSONL, JSON (a list of objects) or Parquet file; a bad line is named by file and line."""
    return (row for _, row in numbered_rows(path))


def numbered_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a JSONL file; (position from 1, row) of a JSON list or a Parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot read input {path}: {err.strerror}") from None
    with handle:
        if path.suffix == ".json":
            try:
                data = json.loads(handle.read().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(f"{path}: not valid JSON ({err})") from None
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise DataError(f"{path}: a .json input must hold a list of objects")
            yield from enumerate(data, start=1)
            return
        # Lines are decoded one by one, so an error names the exact line.
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_number}: corrupt JSONL line ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_number}: each JSONL line must be an object")
            yield line_number, row


def read_rows(source: "DataSource | Path | str") -> Iterator[dict]:
    """Every row of a data source, with an `id` added where the data has none (file stem or dataset name +
    row number) and the source's field renames applied."""
    return (row for _, row in located_rows(source))


def located_rows(source: "DataSource | Path | str") -> Iterator[tuple[str, dict]]:
    """`read_rows` with where each row is: FILE:LINE, or the dataset and row number."""
    source = as_source(source)
    if source.hub is not None:
        data = load_hub(source.hub, source.config, source.split, source.revision)
        missing = [field for field in source.fields.values() if field not in data.column_names]
        if missing:
            raise DataError(f"input {source} has no field {missing[0]!r} (fields: {', '.join(data.column_names)})")
        name = source.hub.rstrip("/").split("/")[-1]
        rows = (
            (f"{source} row {number + 1}", {"id": f"{name}-{number}", **row} if "id" not in row else row)
            for number, row in enumerate(data)
        )
    else:
        rows = _read_local(bundled_file(source.bundled) if source.bundled is not None else source.path)
    for where, row in rows:
        for ours, theirs in source.fields.items():
            if theirs not in row:
                raise DataError(f"input {source}: row {row['id']} has no field {theirs!r} (fields: {', '.join(row)})")
            row[ours] = row.pop(theirs)
        yield where, row


def _read_local(path: Path) -> Iterator[tuple[str, dict]]:
    for file in input_files(path):
        stem = file.stem
        for number, (line, row) in enumerate(numbered_rows(file)):
            if "id" not in row:
                row = {"id": f"{stem}-{number}", **row}
            yield f"{file}:{line}", row


def load_hub(dataset_id: str, config: str | None, split: str, revision: str | None):
    """A Hugging Face dataset split through `datasets.load_dataset` (which caches it on disk, so the second
    load of a split is a memory map); its failures become one line: which id, what went wrong, how to use
    local data instead."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    name = dataset_id + (f" (config {config!r})" if config else "")
    try:
        data = datasets.load_dataset(dataset_id, config, split=split, revision=revision)
    except (DatasetNotFoundError, ConnectionError, FileNotFoundError) as err:
        reason = (
            "has no such dataset"
            if isinstance(err, DatasetNotFoundError)
            else "could not be reached or has no such dataset"
        )
        raise DataError(
            f"Hub dataset {dataset_id}: the Hugging Face Hub {reason} ({first_line(err)}); offline, download it where "
            "there is internet and name the file instead, e.g. input=data.jsonl (or {bundled: arithmetic_train})"
        ) from None
    except ValueError as err:  # datasets names the valid configs or splits in these messages
        raise DataError(f"Hub dataset {name}: {first_line(err)}") from None
    return data


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def stage_folder(source: "DataSource | Path | str") -> Path | None:
    """The folder of an earlier stage's output that a source names, else None."""
    path = as_source(source).path
    return path if path is not None and path.is_dir() and (path / CONFIG).is_file() else None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is damaged; rerun that stage with --force") from None


def input_fingerprint(source: "DataSource | Path | str") -> str:
    """A hash that changes whenever the input data changes: its manifest for stage outputs, the file bytes for
    local and bundled data, `datasets`' own fingerprint for a Hub split; field renames count too."""
    source = as_source(source)
    digest = hashlib.sha256(json.dumps(source.fields, sort_keys=True).encode() if source.fields else b"")
    local = bundled_file(source.bundled) if source.bundled is not None else source.path
    manifest = local / MANIFEST if local is not None and local.is_dir() else None
    if source.hub is not None:
        digest.update(load_hub(source.hub, source.config, source.split, source.revision)._fingerprint.encode())
    elif manifest is not None and manifest.is_file():
        digest.update(manifest.read_bytes())
    else:
        for path in input_files(local):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def read_removed(folder: str | Path, reason: str | None = None) -> Iterator[dict]:
    """The rows a stage removed ({id, reason, evidence, row}), in shard order; only `reason` when given."""
    for path in sorted((Path(folder) / REMOVED_DIR).glob(SHARD_GLOB)):
        for entry in read_file(path):
            if reason is None or entry["reason"] == reason:
                yield entry


def load_rows(folder: str | Path) -> list[dict]:
    """All rows of a stage output, in shard order (small outputs; use `datasets` for large ones)."""
    return list(read_rows(Path(folder)))
