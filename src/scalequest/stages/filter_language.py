"""Question filters. Language (paper: removes ~20%): keep non-empty, all-ASCII questions, drop duplicates."""

from __future__ import annotations

import hashlib

from pydantic import Field

from scalequest import io
from scalequest.config import RowStageConfig
from scalequest.stage import RowStage, Shard, ShardResult


class FilterLanguageConfig(RowStageConfig):
    """Keep non-empty, all-ASCII questions and drop exact duplicates."""

    stage = "filter-language"

    field: str = Field("question", description="Row field holding the question text.")
    ascii_only: bool = Field(True, description="Drop questions with any non-ASCII character (the official rule).")
    deduplicate: bool = Field(
        True, description="Drop exact duplicates after whitespace and case normalisation; the first occurrence stays."
    )


def normalized_key(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.split()).lower().encode(), digest_size=8).digest()


class FilterLanguage(RowStage):
    config: FilterLanguageConfig

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def prepare(self) -> None:
        """Find every row that repeats an earlier one, in one pass, so shards can be filtered independently."""
        self.repeated_ids: set[str] = set()
        if not self.config.deduplicate:
            return
        seen: set[bytes] = set()
        for row in io.read_rows(self.config.input):
            text = row.get(self.config.field)
            if not isinstance(text, str) or not text.strip():
                continue
            key = normalized_key(text)
            if key in seen:
                self.repeated_ids.add(row["id"])
            seen.add(key)

    def process(self, shard: Shard) -> ShardResult:
        field = self.config.field
        result = ShardResult(rows=[])
        for row in shard.rows:
            text = row[field]
            if not isinstance(text, str) or not text.strip():
                result.remove(row, "empty")
            elif self.config.ascii_only and not text.isascii():
                result.remove(row, "non_ascii", sorted({char for char in text if not char.isascii()}))
            elif row["id"] in self.repeated_ids:
                result.remove(row, "duplicate", {"normalized": " ".join(text.split()).lower()})
            else:
                result.rows.append(row)
        return result
