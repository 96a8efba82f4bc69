"""Question filters. Language (paper: removes ~20%): keep non-empty, all-ASCII questions, drop duplicates and
near-duplicates.

Duplicates are found on the question text alone, never on row ids (`normalized_text` says how the text is
compared): the first occurrence in input order stays, and every later one is removed with the normalised text
and the id of the row it repeats as evidence.

Near-duplicates (`near_dedup_threshold`) are questions whose sets of word shingles (`shingle_size` consecutive
words of the normalised text) have a Jaccard similarity at or above the threshold with an earlier question that
was kept. Candidates come from MinHash signatures (datasketch) cut into LSH bands; every candidate pair is then
checked on the exact shingle sets, so nothing under the threshold is removed, and the evidence of each removal
is the pair: the id of the earlier question and their exact Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import Field

from scalequest import io
from scalequest.config import RowStageConfig
from scalequest.stage import RowStage, Shard, ShardResult

LSH_RECALL = 0.9  # least chance that a pair exactly at the threshold shares an LSH band (more above it)
BUCKET_CAP = 32  # kept questions an LSH bucket holds: bounds the checks per question on heavily templated data
SIGNATURE_BATCH = 4096  # questions whose MinHash signatures are cut into band keys at once
DIVERSITY_NGRAMS = (1, 2, 3)
NGRAM_BUFFER = 1 << 18  # n-gram hashes gathered before they are merged into the sorted distinct ones


class FilterLanguageConfig(RowStageConfig):
    """Keep non-empty, all-ASCII questions and drop exact and near duplicates."""

    stage = "filter-language"

    field: str = Field("question", description="Row field holding the question text.")
    ascii_only: bool = Field(True, description="Drop questions with any non-ASCII character (the official rule).")
    deduplicate: bool = Field(
        True,
        description="Drop exact duplicates of the question text after normalisation (Unicode NFKC, case folded, "
        "whitespace collapsed, punctuation and spaces at both ends stripped); the first occurrence stays.",
    )
    near_dedup_threshold: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="Drop a question whose word-shingle set has a Jaccard similarity of at least this with an "
        "earlier kept question (checked exactly on the shingle sets); null turns near-deduplication off. 0.8 is "
        "the usual near-duplicate threshold of corpus deduplication (e.g. Lee et al. 2022); the paper has none.",
    )
    shingle_size: int = Field(
        3,
        ge=1,
        description="Words per shingle of near-deduplication. 3 suits questions of a few dozen words: with 5 "
        "(web-document dedup) one word changed in a 30-word question already drops the Jaccard similarity to 0.68.",
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations of near-deduplication.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")


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
    return text_key(normalized_text(text))


def text_key(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode(), digest_size=8).digest()


def shingles(normalized: str, size: int) -> set[str]:
    """The word shingles of a normalised text: every run of `size` consecutive words (the whole text when it
    has fewer words)."""
    words = normalized.split()
    return {" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}


def shingle_hashes(normalized: str, size: int) -> list[int]:
    """64-bit hashes of the distinct shingles, in no particular order."""
    return [
        int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
        for s in shingles(normalized, size)
    ]


def low32(value: int) -> int:
    """The MinHash's hash function: a shingle's 64-bit hash cut to the 32 bits datasketch's default scheme takes."""
    return value & 0xFFFFFFFF


def lsh_bands(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows per band) of the LSH index: the most rows per band (the fewest candidate pairs to check)
    for which a pair of similarity exactly `threshold` still shares a band with probability `recall` or more.

    A pair of similarity s is a candidate with probability 1 - (1 - s^r)^b; datasketch's own optimiser
    balances false positives against false negatives and, at 0.8 and 128 permutations, finds only 40% of the
    pairs at the threshold, but here false positives cost only an exact check."""
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class NearDuplicates:
    """Near-duplicate search over the distinct questions of one input, in input order, in two passes that keep
    little per question: `add` every question (pass 1: its band keys, 4 bytes per band), then `check` every
    question again in the same order (pass 2: exact checks, for the questions sharing a band key only).

    A question is compared with the kept questions sharing one of its LSH buckets, earliest first, on the exact
    shingle sets; it is a near-duplicate of the first with a similarity at or above the threshold, and joins
    the buckets otherwise. A bucket holds at most `BUCKET_CAP` kept questions: on heavily templated data (many
    questions just under the threshold of one another) this bounds the checks per question, at the price of
    missing the near-duplicates of a question that found its buckets full (counted in `full_buckets`)."""

    def __init__(self, threshold: float, shingle_size: int, num_perm: int, seed: int):
        import numpy as np
        from datasketch import MinHash

        self.threshold, self.shingle_size = threshold, shingle_size
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self.minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=low32)
        # A band's key: its `rows` signature values mixed into 64 bits by fixed odd multipliers.
        rng = np.random.default_rng(seed)
        self.multipliers = rng.integers(1, 2**63, size=(self.bands, self.rows), dtype=np.uint64) | np.uint64(1)
        self.signatures: list = []  # signatures of the questions added since the last batch
        self.key_batches: list = []  # (questions, bands) uint32 band keys
        self.count = 0  # questions added
        self.candidates = self.pairs_checked = self.full_buckets = 0

    def add(self, normalized: str) -> None:
        self.minhash.clear()
        self.minhash.update_batch(shingle_hashes(normalized, self.shingle_size))
        self.signatures.append(self.minhash.hashvalues)
        self.count += 1
        if len(self.signatures) == SIGNATURE_BATCH:
            self.cut_bands()

    def cut_bands(self) -> None:
        import numpy as np

        if self.signatures:
            bands = np.stack(self.signatures)[:, : self.bands * self.rows].reshape(-1, self.bands, self.rows)
            keys = (bands.astype(np.uint64) * self.multipliers).sum(axis=2)  # wraps modulo 2^64
            # The top 32 bits: two different bands share a key by chance once in 2^32, which only adds a check.
            self.key_batches.append(((keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)).astype(np.uint32))
            self.signatures = []

    def find_candidates(self) -> None:
        """After the last `add`: keep the band keys only of the questions that share one with another question.

        Band by band, so that the keys are never copied whole (4 bytes per band and question)."""
        import numpy as np

        self.cut_bands()
        batches, self.key_batches = self.key_batches, []
        shared = [np.zeros(keys.shape, dtype=bool) for keys in batches]
        ends = np.cumsum([len(keys) for keys in batches])[:-1]
        for band in range(self.bands):
            column = np.concatenate([keys[:, band] for keys in batches]) if batches else np.zeros(0, np.uint32)
            _, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
            for flags, part in zip(shared, np.split(counts[inverse] > 1, ends)):
                flags[:, band] = part
        self.candidate_index = []  # places among the added questions, in input order
        self.candidate_buckets = []  # each one's shared buckets, one int each: band number << 32 | key
        offset = 0
        for keys, flags in zip(batches, shared):
            involved = flags.any(axis=1)
            self.candidate_index += (np.flatnonzero(involved) + offset).tolist()
            buckets = keys[involved].astype(np.int64) | (np.arange(self.bands, dtype=np.int64) << 32)
            self.candidate_buckets += [row[mask].tolist() for row, mask in zip(buckets, flags[involved])]
            offset += len(keys)
        self.candidates = len(self.candidate_index)
        del batches, shared
        self.buckets: dict[int, list[int]] = {}  # bucket -> kept candidates in it, in input order
        self.kept: dict[int, tuple[object, bytes]] = {}  # kept candidate -> (its id, its shingle hashes)
        self.next = 0  # the next entry of candidate_index that `check` meets
        self.position = -1

    def check(self, row_id, normalized: str) -> tuple[object, float] | None:
        """Pass 2, called for the same questions in the same order as `add`: (id of the first kept question it
        near-duplicates, their exact Jaccard similarity), or None when it stays."""
        import numpy as np

        self.position += 1
        if self.next >= self.candidates or self.candidate_index[self.next] != self.position:
            return None
        entry, self.next = self.next, self.next + 1
        mine = set(shingle_hashes(normalized, self.shingle_size))
        buckets = self.candidate_buckets[entry]
        self.candidate_buckets[entry] = None
        for kept in sorted({kept for bucket in buckets for kept in self.buckets.get(bucket, ())}):
            first, hashes = self.kept[kept]
            other = np.frombuffer(hashes, np.uint64).tolist()
            common = len(mine.intersection(other))
            self.pairs_checked += 1
            similarity = common / (len(mine) + len(other) - common)
            if similarity >= self.threshold:
                return first, round(similarity, 4)
        joined = False
        for bucket in buckets:
            members = self.buckets.setdefault(bucket, [])
            if len(members) < BUCKET_CAP:
                members.append(entry)
                joined = True
                self.full_buckets += len(members) == BUCKET_CAP
        if joined:  # a question in no bucket is never compared again
            self.kept[entry] = (row_id, np.array(sorted(mine), dtype=np.uint64).tobytes())
        return None


def distinct_ngrams(texts: Iterable[str], sizes: tuple[int, ...] = DIVERSITY_NGRAMS, batch: int = 8192) -> dict:
    """Diversity of a set of questions: per n, the number of word n-grams (within each question, words of its
    normalised text) and the share of them that are distinct across all the questions (distinct-n).

    Counted exactly up to 64-bit hash collisions, with 8 bytes per distinct n-gram in memory (and one copy of
    the largest set while it grows)."""
    import numpy as np

    multiplier = np.uint64(0x9E3779B97F4A7C15)
    totals = dict.fromkeys(sizes, 0)
    distinct: dict[int, np.ndarray] = {n: np.zeros(0, np.uint64) for n in sizes}
    pending: dict[int, list] = {n: [] for n in sizes}
    pending_size = dict.fromkeys(sizes, 0)
    questions = words_total = 0

    def merge(n: int) -> None:
        """Add the pending hashes to the sorted distinct ones, copying those once, never sorting them again."""
        new, seen = np.unique(np.concatenate(pending[n])) if pending[n] else np.zeros(0, np.uint64), distinct[n]
        if seen.size:
            at = np.searchsorted(seen, new)
            new = new[(at == seen.size) | (seen[np.minimum(at, seen.size - 1)] != new)]
            new = np.insert(seen, np.searchsorted(seen, new), new)
        distinct[n], pending[n], pending_size[n] = new, [], 0

    def count(chunk: list[list[str]]) -> None:
        lengths = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))
        # hash() of a str is salted per process, but every hash here is made and compared in this one call.
        flat = np.fromiter((hash(w) for words in chunk for w in words), dtype=np.int64, count=int(lengths.sum()))
        flat, question = flat.view(np.uint64), np.repeat(np.arange(len(chunk)), lengths)
        for n in sizes:
            starts = flat.size - n + 1
            if starts <= 0:
                continue
            hashed = flat[:starts].copy()
            for offset in range(1, n):
                hashed = hashed * multiplier + flat[offset : offset + starts]
            hashed = hashed[question[n - 1 :] == question[:starts]]  # n-grams within one question only
            totals[n] += hashed.size
            pending[n].append(hashed)
            pending_size[n] += hashed.size
            if pending_size[n] >= NGRAM_BUFFER:
                merge(n)

    chunk: list[list[str]] = []
    for text in texts:
        chunk.append(normalized_text(text).split())
        questions += 1
        words_total += len(chunk[-1])
        if len(chunk) == batch:
            count(chunk)
            chunk = []
    if chunk:
        count(chunk)
    figures: dict = {"questions": questions, "words": words_total}
    for n in sizes:
        merge(n)
        figures[f"distinct_{n}"] = round(distinct[n].size / totals[n], 6) if totals[n] else None
    return figures


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

    def distinct_questions(self, first: dict[bytes, object] | None) -> Iterator[tuple[int, int, object, str]]:
        """(shard, position, id, normalised text) of each row that the language rules keep and that repeats no
        earlier one, in input order. With `first` (normalised text's hash -> id of its first occurrence), the
        repeats are found on the way and recorded in `self.repeats`; without, those already recorded are skipped."""
        for shard in self.input_shards():
            for position, row in enumerate(shard.rows):
                text = row.get(self.config.field)
                if self.reason_to_remove(text) is not None or (shard.index, position) in self.repeats:
                    continue
                normalized = normalized_text(text)
                if first is not None:
                    key = text_key(normalized)
                    if key in first:
                        self.repeats[(shard.index, position)] = first[key]
                        continue
                    first[key] = row["id"]
                yield shard.index, position, row["id"], normalized

    def prepare(self) -> None:
        """Find every row that repeats or near-duplicates an earlier one, so shards can be filtered independently.

        A repeat is named by its place, (shard, position in the shard), never by its id, so that rows sharing
        an id are told apart; rows removed for another reason never count as a first occurrence. One pass finds
        the exact repeats and the near-duplicate candidates, a second checks the candidates."""
        self.repeats: dict[tuple[int, int], object] = {}  # (shard, position) -> id of the row it repeats
        self.near: dict[tuple[int, int], tuple[object, float]] = {}  # (shard, position) -> (first id, Jaccard)
        self.near_stats: dict | None = None
        config = self.config
        if not config.deduplicate and config.near_dedup_threshold is None:
            return
        first: dict[bytes, object] | None = {} if config.deduplicate else None
        if config.near_dedup_threshold is None:
            for _ in self.distinct_questions(first):
                pass
            return
        finder = NearDuplicates(config.near_dedup_threshold, config.shingle_size, config.num_perm, config.seed)
        for *_, normalized in self.distinct_questions(first):
            finder.add(normalized)
        first = None  # the exact-duplicate index is not needed any more
        finder.find_candidates()
        for shard, position, row_id, normalized in self.distinct_questions(None):
            match = finder.check(row_id, normalized)
            if match is not None:
                self.near[(shard, position)] = match
        self.near_stats = {
            "bands": finder.bands,
            "rows_per_band": finder.rows,
            "questions_compared": finder.count,
            "candidates": finder.candidates,
            "pairs_checked": finder.pairs_checked,
            "full_buckets": finder.full_buckets,
            "removed": len(self.near),
        }

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
            elif (shard.index, position) in self.near:
                first, similarity = self.near[(shard.index, position)]
                result.remove(row, "near_duplicate", {"first": first, "jaccard": similarity})
            else:
                result.rows.append(row)
        return result

    def finalize(self) -> dict:
        """The near-deduplication's figures and the diversity of the kept questions (distinct word n-grams)."""
        out, field = Path(self.config.output), self.config.field
        kept = (row[field] for path in sorted(out.glob(io.SHARD_GLOB)) for row in io.read_file(path))
        diversity = distinct_ngrams(kept)
        stats, share = getattr(self, "near_stats", None), None
        if stats is not None and stats["questions_compared"]:
            share = round(stats["removed"] / stats["questions_compared"], 6)
        return {"near_dedup": stats, "diversity": {**diversity, "near_duplicate_share": share}}
