"""generate-questions ids: unique across generators, seeds and prompts; the same for the same config.

Only the shards' placeholder rows are built (no model runs); test_runner.py runs the stage itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig, id_prefix
from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig


def config(output: Path, **overrides) -> GenerateQuestionsConfig:
    values = dict(output=output, num=12, shard_size=3, engine={"model": "some/generator"}, progress=False)
    return GenerateQuestionsConfig(**{**values, **overrides})


def ids(stage) -> list:
    return [row["id"] for shard in stage.input_shards() for row in shard.rows]


def test_ids_are_a_config_prefix_and_the_row_number(tmp_path):
    prefix = id_prefix(config(tmp_path))
    assert re.fullmatch(r"q-[0-9a-f]{6}-", prefix)
    assert ids(GenerateQuestions(config(tmp_path))) == [f"{prefix}{number:08d}" for number in range(12)]


@pytest.mark.parametrize(
    "change",
    [
        {"engine": {"model": "another/generator"}},
        {"engine": {"model": "some/generator", "revision": "v2"}},
        {"engine": {"engine": "vllm", "model": "some/generator"}},
        {"sampling": {"seed": 1}},
        {"sampling": {"temperature": 0.7}},
        {"pre_query_prefix": "<|user|>\n"},
        {"system_prompt": "Ask a math question."},
        {"shard_size": 4},  # other shards, other shard seeds: other rows
    ],
)
def test_other_generators_seeds_and_prompts_give_disjoint_ids(tmp_path, change):
    first = ids(GenerateQuestions(config(tmp_path / "a")))
    other = ids(GenerateQuestions(config(tmp_path / "b", **change)))
    assert not set(first) & set(other)


@pytest.mark.parametrize(
    "change",
    [
        {"progress": True},
        {"num": 20},  # more rows: the first 12 keep their ids (and their seeds)
        {"engine": {"model": "some/generator", "batch_size": 2}},  # operational: a resume may change it
        {"executor": "local", "keep_removed": False, "max_failed_fraction": 0.5},
    ],
)
def test_the_same_config_gives_the_same_ids(tmp_path, change):
    first = ids(GenerateQuestions(config(tmp_path / "a")))
    assert ids(GenerateQuestions(config(tmp_path / "elsewhere", **change)))[:12] == first


def test_qpo_data_samples_with_the_ids_of_generate_questions(tmp_path):
    qpo = BuildQPOData(QPODataConfig(output=tmp_path / "pairs", num=5, shard_size=2, generator={"model": "qft"}))
    expected = GenerateQuestions(config(tmp_path / "q", num=5, shard_size=2, engine={"model": "qft"}))
    assert ids(qpo) == ids(expected) and len(set(ids(qpo))) == 5
