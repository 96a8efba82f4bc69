"""Decontamination (the paper's 13-gram overlap analysis): find questions that share a 13-gram with a test set.

Text is lowercased, punctuation is deleted, and the rest is split into words; a row overlaps a benchmark
when any run of 13 consecutive words of its text also occurs in one of the benchmark's test questions.
The paper reports 97.4% of its data clean on average over its evaluation sets. This stage reports the
clean ratio per benchmark in the manifest and, by default, drops every row that overlaps any benchmark
(`drop: false` keeps them and marks each row with what it overlapped).

The benchmark n-grams are built once by the driver (`prepare`) as 64-bit hashes in sorted NumPy arrays
(8 bytes per n-gram plus 4 for its owner), small enough to ship to every worker. Benchmark questions
shorter than 13 words have no 13-gram and cannot be matched; the manifest counts them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from scalequest.config import RowStageConfig
from scalequest.runner import finished_stats
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.stages.evaluate import BenchmarkSelection, benchmark_rows, benchmark_source

if TYPE_CHECKING:
    import numpy as np

_PUNCTUATION = re.compile(r"[^\w\s]")


class DecontaminateConfig(BenchmarkSelection, RowStageConfig):
    """Find rows sharing a 13-gram with a benchmark test set; report clean ratios, drop overlapping rows."""

    stage = "decontaminate"

    ngram: int = Field(13, ge=1, description="Words per n-gram (paper: 13).")
    fields: list[str] = Field(["question"], description="Row fields whose text is checked (each on its own).")
    drop: bool = Field(
        True,
        description="Drop overlapping rows; false keeps them, each marked with the benchmark questions it overlaps.",
    )

    @field_validator("fields")
    @classmethod
    def some_fields(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("name at least one field to check")
        return names


def words(text: str) -> list[str]:
    """Lowercased words with punctuation deleted ("x^2+1." -> ["x21"]), as in common n-gram decontamination."""
    return _PUNCTUATION.sub("", text.lower()).split()


def ngram_hashes(text: str, n: int) -> list[int]:
    """Stable 64-bit hashes of every run of n consecutive words (none when the text is shorter)."""
    tokens = words(text)
    return [
        int.from_bytes(hashlib.blake2b(" ".join(tokens[i : i + n]).encode(), digest_size=8).digest(), "little")
        for i in range(len(tokens) - n + 1)
    ]


@dataclass
class BenchmarkNgrams:
    """One benchmark's n-grams: sorted unique hashes, and for each the index of a question that holds it."""

    name: str
    ids: list[str]
    hashes: np.ndarray  # uint64, sorted
    owners: np.ndarray  # int32, index into ids
    too_short: int

    @classmethod
    def build(cls, name: str, rows: list[dict], n: int) -> "BenchmarkNgrams":
        import numpy as np

        hashes: list[int] = []
        owners: list[int] = []
        too_short = 0
        for index, row in enumerate(rows):
            found = ngram_hashes(row["question"], n)
            too_short += not found
            hashes += found
            owners += [index] * len(found)
        array = np.array(hashes, dtype=np.uint64)
        unique, first = np.unique(array, return_index=True)  # sorted; one owner per n-gram is enough
        return cls(name, [row["id"] for row in rows], unique, np.array(owners, dtype=np.int32)[first], too_short)

    def matches(self, hashes: np.ndarray) -> dict[str, int]:
        """Benchmark question id -> how many of `hashes` it shares."""
        import numpy as np

        if not len(self.hashes) or not len(hashes):
            return {}
        positions = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hit = self.hashes[positions] == hashes
        found: dict[str, int] = {}
        for owner in self.owners[positions[hit]]:
            found[self.ids[owner]] = found.get(self.ids[owner], 0) + 1
        return found


class Decontaminate(RowStage):
    config: DecontaminateConfig

    def required_fields(self) -> tuple[str, ...]:
        return tuple(self.config.fields)

    def prepare(self) -> None:
        self.index = [
            BenchmarkNgrams.build(name, benchmark_rows(name, self.config.data_dir), self.config.ngram)
            for name in self.config.benchmarks
        ]

    def overlaps(self, row: dict) -> list[dict]:
        """Every benchmark question the row shares an n-gram with: [{benchmark, benchmark_id, shared_ngrams}]."""
        import numpy as np

        hashes = set()
        for name in self.config.fields:
            text = row[name]
            if isinstance(text, str):
                hashes.update(ngram_hashes(text, self.config.ngram))
        array = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
        return [
            {"benchmark": benchmark.name, "benchmark_id": question_id, "shared_ngrams": shared}
            for benchmark in self.index
            for question_id, shared in sorted(benchmark.matches(array).items())
        ]

    def process(self, shard: Shard) -> ShardResult:
        result = ShardResult(rows=[])
        for row in shard.rows:
            matches = self.overlaps(row)
            for name in dict.fromkeys(match["benchmark"] for match in matches):
                result.counts[f"overlap:{name}"] += 1
            if not matches:
                result.rows.append(row if self.config.drop else {**row, "contamination": []})
                continue
            result.counts["contaminated"] += 1
            if self.config.drop:
                result.remove(row, "contaminated", {"contamination": matches})
            else:
                result.rows.append({**row, "contamination": matches})
        return result

    def finalize(self) -> dict:
        rows_in = 0
        counts: dict[str, int] = {}
        for path in finished_stats(self.config.output):
            stats = json.loads(path.read_text())
            rows_in += stats["rows_in"]
            for key, value in stats["counts"].items():
                counts[key] = counts.get(key, 0) + value

        def clean(key: str) -> float | None:
            return round(1 - counts.get(key, 0) / rows_in, 6) if rows_in else None

        return {
            "ngram": self.config.ngram,
            "clean_ratio": {**{b.name: clean(f"overlap:{b.name}") for b in self.index}, "all": clean("contaminated")},
            "benchmark_questions": {b.name: len(b.ids) for b in self.index},
            "benchmark_sources": {
                name: benchmark_source(name, self.config.data_dir) for name in self.config.benchmarks
            },
            "benchmark_questions_too_short": {b.name: b.too_short for b in self.index},
        }
