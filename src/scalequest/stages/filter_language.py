"""Question filters. Language (paper: removes ~20%): keep non-empty, all-ASCII questions, drop duplicates.

Duplicates are found on the question text alone, never on row ids (`normalized_text` says how the text is
compared): the first occurrence in input order stays, and every later one is removed with the normalised text
and the id of the row it repeats as evidence.
"""

from __future__ import annotations

import hashlib
import unicodedata

from pydantic import Field

from scalequest.config import RowStageConfig
from scalequest.stage import RowStage, Shard, ShardResult


class FilterLanguageConfig(RowStageConfig):
    """Keep non-empty, all-ASCII questions and drop exact duplicates."""

    stage = "filter-language"

    field: str = Field("question", description="Row field holding the question text.")
    ascii_only: bool = Field(True, description="Drop questions with any non-ASCII character (the official rule).")
    deduplicate: bool = Field(
        True,
        description="Drop exact duplicates of the question text after normalisation (Unicode NFKC, case folded, "
        "whitespace collapsed, punctuation and spaces at both ends stripped); the first occurrence stays.",
    )


def is_edge(char: str) -> bool:
    """Whitespace or Unicode punctuation (. , ? ! ; : quotes, brackets, dashes), stripped from both ends."""
    return char.isspace() or unicodedata.category(char).startswith("P")


def normalized_text(text: str) -> str:
    """The text duplicates are compared on: Unicode NFKC, case folded, every run of whitespace one space, and
    punctuation stripped from both ends, so "What is 1+1?" repeats " what  IS 1+1 ". Symbols ($, +, =) stay;
    a text that is punctuation only is compared whole."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    start, end = 0, len(folded)
    while start < end and is_edge(folded[start]):
        start += 1
    while end > start and is_edge(folded[end - 1]):
        end -= 1
    return folded[start:end] or folded


def normalized_key(text: str) -> bytes:
    """An 8-byte hash of `normalized_text`: what deduplication keeps in memory for every distinct question."""
    return hashlib.blake2b(normalized_text(text).encode(), digest_size=8).digest()


class FilterLanguage(RowStage):
    config: FilterLanguageConfig

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def reason_to_remove(self, text) -> str | None:
        """`empty` or `non_ascii` for a question the filter removes whatever else the input holds."""
        if not isinstance(text, str) or not text.strip():
            return "empty"
        if self.config.ascii_only and not text.isascii():
            return "non_ascii"
        return None

    def prepare(self) -> None:
        """Find every row that repeats an earlier one, in one pass, so shards can be filtered independently.

        A repeat is named by its place, (shard, position in the shard), never by its id, so that rows sharing
        an id are told apart; rows removed for another reason never count as a first occurrence."""
        self.repeats: dict[tuple[int, int], object] = {}  # (shard, position) -> id of the row it repeats
        if not self.config.deduplicate:
            return
        first: dict[bytes, object] = {}  # normalised text's hash -> id of its first occurrence
        for shard in self.input_shards():
            for position, row in enumerate(shard.rows):
                text = row.get(self.config.field)
                if self.reason_to_remove(text) is not None:
                    continue
                key = normalized_key(text)
                if key in first:
                    self.repeats[(shard.index, position)] = first[key]
                else:
                    first[key] = row["id"]

    def process(self, shard: Shard) -> ShardResult:
        field = self.config.field
        result = ShardResult(rows=[])
        for position, row in enumerate(shard.rows):
            text = row[field]
            reason = self.reason_to_remove(text)
            if reason == "empty":
                result.remove(row, "empty")
            elif reason == "non_ascii":
                result.remove(row, "non_ascii", sorted({char for char in text if not char.isascii()}))
            elif (shard.index, position) in self.repeats:
                evidence = {"normalized": normalized_text(text), "first": self.repeats[(shard.index, position)]}
                result.remove(row, "duplicate", evidence)
            else:
                result.rows.append(row)
        return result
