"""filter-difficulty (paper §2.3): score every question with the difficulty-train regressor, drop easy ones.

`filter-difficulty` scores every synthetic question (`difficulty`, a predicted fail rate) and drops
   easy ones by a rule per generator: a score threshold, a bottom fraction, or target shares of the
   five buckets very easy / easy / medium / hard / very hard ([0, 0.2), [0.2, 0.4), ..., [0.8, 1]).
   The paper dropped 9.2% of all questions this way, from one generator's questions only.

How filter-difficulty runs. A bottom fraction or bucket shares are decisions over ALL rows of a
generator, while shards run independently (and, with the Ray executor, on other machines). So the
stage works in two passes:
  - scoring is a row-wise pass of its own, `ScoreDifficulty` (its folder says `score-difficulty`; it is
    not a command): a function over a shard
    of rows, mapped over shards by the executor, resumable per shard. It writes full rows plus
    `difficulty` into OUTPUT/scores (or `scores_dir`), a normal stage output with its own manifest;
  - `prepare()` of filter-difficulty runs that scoring stage (finished shards are skipped), then reads
    only (id, generator, difficulty) of every scored row and decides which ids stay: a pure function
    of the scores and the rules (ties broken by input order, sampling seeded), so a resumed run
    decides exactly the same;
  - the filter pass maps scored shard i to output shard i, keeping the chosen rows.
With `scores_dir` outside OUTPUT, trying another rule (--force) reuses the scores instead of redoing
them; scoring a million questions with a 7B model is the expensive part, the decision is not.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from scalequest import io, runner
from scalequest.config import ConfigError, ModelLoading, RowStageConfig, Section
from scalequest.models import ModelError, load_tokenizer
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.stages.difficulty_label import BUCKETS, Bucket, bucket_of, histogram
from scalequest.stages.difficulty_train import prepare_tokenizer
from scalequest.scorers.sequence_classification import (
    architectures,
    encode_texts,
    head_outputs,
    load_classifier,
    read_model_config,
    score_ids,
    use_padding,
)

log = logging.getLogger(__name__)


def check_regressor(regressor: "RegressorConfig") -> str:
    """The regressor's location, after checking it is a 1-output sequence-classification model."""
    name = regressor.model
    source, model_config = read_model_config(name, regressor.revision, regressor.trust_remote_code, what="regressor")
    outputs = head_outputs(model_config)
    if outputs is None:
        raise ModelError(
            f"regressor {name} is not a sequence-classification model (its config.json lists architectures "
            f"{architectures(model_config) or 'none'}); train one with difficulty-train"
        )
    if outputs != 1:
        raise ModelError(f"regressor {name} has {outputs} outputs; a difficulty regressor has 1")
    return source


# Questions per forward pass. Batches are sorted by length, so little of them is padding. On our 2-core
# CPU (SmolLM2-135M as regressor, GSM8K questions) batches of 16 scored 2.2x (bf16) to 2.8x (float32)
# as many questions per second as one at a time, batches of 4 about 1.5x (benchmarks/difficulty_scoring.py).
GPU_BATCH_SIZE = 64
CPU_BATCH_SIZE = 16


class RegressorConfig(ModelLoading):
    """The difficulty regressor: named and loaded like any model (model, revision, tokenizer, dtype, ...). A plain
    string is short for `{model: STRING}`."""

    model: str = Field(
        ...,
        description="A difficulty-train output folder (or any 1-output sequence-classification model): HF id or "
        "local directory.",
    )
    device: str = Field("auto", description="Device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    batch_size: int | None = Field(
        None,
        ge=1,
        description=f"Questions per forward pass, sorted by length; default {GPU_BATCH_SIZE} on CUDA, "
        f"{CPU_BATCH_SIZE} on CPU.",
    )
    max_length: int = Field(
        512, ge=8, description="Longest tokenized question; longer ones are truncated (match difficulty-train)."
    )

    @model_validator(mode="before")
    @classmethod
    def from_name(cls, value: Any) -> Any:
        return {"model": str(value)} if isinstance(value, (str, Path)) else value


class ScoreDifficultyConfig(RowStageConfig):
    """Score each question's difficulty (a predicted fail rate) with a regressor from difficulty-train."""

    stage = "score-difficulty"

    regressor: RegressorConfig = Field(
        ...,
        description="The difficulty regressor: a difficulty-train output folder, or {model, revision, device, "
        "batch_size, ...}.",
    )
    field: str = Field("question", description="Row field holding the question text.")
    shard_size: int = Field(1000, ge=1, description="Questions per output shard; a shard is the unit of resume.")


def score_questions(
    model, tokenizer, questions: list[str], batch_size: int, max_length: int
) -> tuple[list[float], int]:
    """The regressor's score for each question, in order, and the tokens it read; batches are sorted by length to
    save padding."""
    encoded = encode_texts(model, tokenizer, questions, max_length)
    # No cap on a batch's padding: questions are short, so full batches pay even on a CPU (the numbers above).
    return score_ids(model, tokenizer, encoded, batch_size, max_padding=None), sum(map(len, encoded))


class ScoreDifficulty(RowStage):
    config: ScoreDifficultyConfig

    def check(self) -> None:
        check_regressor(self.config.regressor)

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def gpus_per_replica(self) -> int:
        return 0 if self.config.regressor.device == "cpu" else 1

    def setup(self) -> None:
        regressor = self.config.regressor
        source = check_regressor(regressor)
        self.tokenizer = load_tokenizer(regressor.tokenizer or source, regressor.trust_remote_code)
        prepare_tokenizer(self.tokenizer)  # pad with EOS when there is no pad token, as difficulty-train does
        self.model = load_classifier(
            source,
            regressor.model,
            what="regressor",
            device=regressor.device,
            dtype=regressor.dtype,
            trust_remote_code=regressor.trust_remote_code,
        )
        cuda = self.model.device.type == "cuda"
        self.batch_size = regressor.batch_size or (GPU_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
        if not use_padding(self.model, self.tokenizer):  # neither a pad nor an EOS token to pad with
            self.batch_size = 1

    def process(self, shard: Shard) -> ShardResult:
        field = self.config.field
        result = ShardResult(rows=[])
        rows = []
        for row in shard.rows:
            if isinstance(row[field], str) and row[field].strip():
                rows.append(row)
            else:
                result.remove(row, "empty")
        questions = [r[field] for r in rows]
        # The tokens the regressor read go to the manifest, for `scalequest estimate`.
        scores, result.tokens_in = score_questions(
            self.model, self.tokenizer, questions, self.batch_size, self.config.regressor.max_length
        )
        result.rows = [{**row, "difficulty": score} for row, score in zip(rows, scores)]
        return result

    def teardown(self) -> None:
        del self.model

    def finalize(self) -> dict:
        scores = [row["difficulty"] for row in io.load_rows(self.config.output)]
        return {"regressor": self.config.regressor.model, "histogram": histogram(scores)}


class DifficultyRule(Section):
    """At most one of threshold, bottom_fraction, target_shares; none of them keeps every question."""

    threshold: float | None = Field(
        None, description="Drop questions scored below this (scores are predicted fail rates: 0 = always solved)."
    )
    bottom_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Drop this share of the easiest questions: floor(share x count), ties by input order.",
    )
    target_shares: dict[Bucket, float] | None = Field(
        None,
        description="Share of the kept questions per bucket (very_easy, easy, medium, hard, very_hard; unnamed = 0; "
        "sum 1): "
        "keeps as many questions as fit these shares, sampled at random within a bucket.",
    )

    @model_validator(mode="after")
    def one_rule(self) -> "DifficultyRule":
        chosen = [name for name in ("threshold", "bottom_fraction", "target_shares") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set only one of threshold, bottom_fraction, target_shares (got {', '.join(chosen)})")
        if self.target_shares is not None:
            if any(share < 0 for share in self.target_shares.values()):
                raise ValueError("target_shares must not be negative")
            if abs(sum(self.target_shares.values()) - 1) > 1e-6:
                raise ValueError(f"target_shares must sum to 1 (they sum to {sum(self.target_shares.values()):g})")
        return self

    def describe(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True) or {"keep": "all"}


def choose_dropped(scored: list[tuple[str, float]], rule: DifficultyRule, seed: str) -> dict[str, str]:
    """Ids to drop under `rule`, with the reason, for one generator's (id, score) pairs in input order."""
    if rule.threshold is not None:
        return {row_id: "below_threshold" for row_id, score in scored if score < rule.threshold}
    if rule.bottom_fraction is not None:
        count = math.floor(len(scored) * rule.bottom_fraction + 1e-9)  # 0.29 x 100 is 28.999...
        easiest = sorted(range(len(scored)), key=lambda i: (scored[i][1], i))[:count]
        return {scored[i][0]: "easiest_fraction" for i in easiest}
    if rule.target_shares is not None:
        return _drop_to_shares(scored, rule.target_shares, seed)
    return {}


def _drop_to_shares(scored: list[tuple[str, float]], shares: dict[str, float], seed: str) -> dict[str, str]:
    """Keep the most questions whose buckets match `shares`: total = min over buckets of count / share."""
    members: dict[str, list[str]] = {name: [] for name in BUCKETS}
    for row_id, score in scored:
        members[bucket_of(score)].append(row_id)
    wanted = {name: shares.get(name, 0.0) for name in BUCKETS}
    total = min(math.floor(len(members[name]) / share + 1e-9) for name, share in wanted.items() if share > 0)
    # Largest remainders: quotas sum to `total` exactly and never exceed a bucket's count,
    # because share x total <= count for every bucket.
    exact = {name: share * total for name, share in wanted.items()}
    quota = {name: math.floor(value + 1e-9) for name, value in exact.items()}
    by_remainder = sorted(BUCKETS, key=lambda name: (-(exact[name] - quota[name]), BUCKETS.index(name)))
    for name in by_remainder[: total - sum(quota.values())]:
        quota[name] += 1
    rng = random.Random(seed)
    dropped = {}
    for name in BUCKETS:
        kept = set(rng.sample(members[name], quota[name]))
        dropped.update({row_id: "bucket_share" for row_id in members[name] if row_id not in kept})
    return dropped


class FilterDifficultyConfig(ScoreDifficultyConfig):
    """Score questions with the difficulty regressor and drop easy ones by a rule per generator."""

    stage = "filter-difficulty"

    default_rule: DifficultyRule = Field(
        default_factory=lambda: DifficultyRule(bottom_fraction=0.1),
        description="Rule for generators not named in generator_rules (ours: drop the easiest 10%; the paper removed "
        "9.2% overall). {} keeps all.",
    )
    generator_rules: dict[str, DifficultyRule] = Field(
        default_factory=dict,
        description="Generator (the rows' generator field) -> its rule; the paper filtered only one generator's "
        "questions.",
    )
    generator_field: str = Field(
        "generator", description="Row field naming the model that wrote the question; rows without it use default_rule."
    )
    seed: int = Field(0, description="Seed of the random sampling within buckets (target_shares).")
    scores_dir: Path | None = Field(
        None,
        description="Where the scored rows go (a score-difficulty output); default OUTPUT/scores. Outside OUTPUT, a "
        "rule change with --force reuses the scores.",
    )

    def scoring_config(self) -> ScoreDifficultyConfig:
        values = {name: getattr(self, name) for name in ScoreDifficultyConfig.model_fields}
        return ScoreDifficultyConfig(**{**values, "output": self.scores_dir or self.output / "scores"})


class FilterDifficulty(RowStage):
    config: FilterDifficultyConfig

    def check(self) -> None:
        check_regressor(self.config.regressor)
        if self.config.scores_dir is not None and self.config.scores_dir.resolve() == self.config.output.resolve():
            raise ConfigError("scores_dir must differ from output (default: OUTPUT/scores)")

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def rule_for(self, generator: str) -> DifficultyRule:
        return self.config.generator_rules.get(generator, self.config.default_rule)

    def prepare(self) -> None:
        """Score every row (the executor runs the scoring stage), then decide which rows stay."""
        config = self.config
        scoring = config.scoring_config()
        # --force redoes the scores only when they came from another regressor, input or scoring setup.
        fingerprint = io.input_fingerprint(config.input)
        saved = io.read_manifest(scoring.output) if scoring.output.is_dir() else None
        reusable = (
            saved is not None
            and saved.get("config_hash") == scoring.config_hash()
            and saved.get("input_fingerprint") == fingerprint
        )
        self.scoring = runner.run_row_stage(ScoreDifficulty, scoring, force=self.force and not reusable)
        self.scores_dir = scoring.output
        by_generator: dict[str, list[tuple[str, float]]] = {}
        for row in io.read_rows(scoring.output):
            by_generator.setdefault(str(row.get(config.generator_field) or ""), []).append(
                (row["id"], row["difficulty"])
            )
        self.dropped: dict[str, str] = {}
        self.summary: dict[str, dict] = {}
        for generator, scored in by_generator.items():
            rule = self.rule_for(generator)
            dropped = choose_dropped(scored, rule, seed=f"{config.seed}-{generator}")
            self.dropped.update(dropped)
            self.summary[generator] = {
                "rule": rule.describe(),
                "before": histogram([s for _, s in scored]),
                "after": histogram([s for row_id, s in scored if row_id not in dropped]),
            }

    def input_shards(self) -> Iterator[Shard]:
        # Scored shard i holds input shard i (with difficulty), so it becomes output shard i.
        for path in sorted(self.scores_dir.glob(io.SHARD_GLOB)):
            yield Shard(int(path.stem.split("-")[1]), list(io.read_file(path)))

    def process(self, shard: Shard) -> ShardResult:
        # The regressor's work on this shard was done by score-difficulty: its tokens count here.
        scored = json.loads(io.stats_path(self.scores_dir, shard.index).read_text())
        result = ShardResult(rows=[], tokens_in=scored.get("tokens_in", 0))
        for row in shard.rows:
            reason = self.dropped.get(row["id"])
            if reason:
                rule = self.config.generator_rules.get(row.get(self.config.generator_field), self.config.default_rule)
                result.remove(
                    row, reason, {"difficulty": row["difficulty"], "rule": rule.model_dump(exclude_none=True)}
                )
            else:
                result.rows.append(row)
        return result

    def finalize(self) -> dict:
        before = Counter()
        after = Counter()
        for entry in self.summary.values():
            before.update(entry["before"])
            after.update(entry["after"])
        if not sum(after.values()):
            log.warning("%s: no question left after filtering; the output is empty", self.config.stage)
        # The scoring pass is where the time and GPUs go; count it here, where run summaries look.
        own = [json.loads(path.read_text()) for path in runner.finished_stats(self.config.output)]
        return {
            "wall_seconds": round(sum(s["seconds"] for s in own) + self.scoring.get("wall_seconds", 0.0), 3),
            "devices": sorted({s.get("device", "cpu") for s in own} | set(self.scoring.get("devices", []))),
            "gpu_hours": self.scoring.get("gpu_hours", 0.0),  # the filter pass itself never uses a GPU
            "regressor": self.config.regressor.model,
            "scores": str(self.scores_dir),
            "scoring_dropped": self.scoring.get("dropped", {}),
            "histogram": {"before": {b: before[b] for b in BUCKETS}, "after": {b: after[b] for b in BUCKETS}},
            "by_generator": self.summary,
        }
