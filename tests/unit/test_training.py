"""What every training stage shares (scalequest.training): the `trainer` mapping of any trainer-arguments field,
our defaults where they differ from the library's, and its errors."""

from __future__ import annotations

import pytest

from scalequest.cli import EXIT_BAD_INPUT, main
from scalequest.config import ConfigError, build_config
from scalequest.stages.difficulty_train import DifficultyTrainConfig
from scalequest.stages.qft import QFTConfig
from scalequest.stages.qpo import QPOConfig
from scalequest.stages.sft import SFTStageConfig
from scalequest.training import OUR_TRAINER_DEFAULTS, trainer_arguments


def test_our_defaults_apply_and_the_trainer_mapping_overrides_them(tmp_path):
    from trl import SFTConfig

    config = SFTStageConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out", bf16=False)
    args = trainer_arguments(config, SFTConfig, max_length=64)
    assert args.report_to == [] and args.save_total_limit == OUR_TRAINER_DEFAULTS["save_total_limit"]
    assert (
        args.max_length == 64
        and args.num_train_epochs == 3.0
        and args.output_dir == str(tmp_path / "out" / "checkpoints")
    )
    config = SFTStageConfig(
        input=tmp_path / "in.jsonl",
        output=tmp_path / "out",
        bf16=False,
        trainer={"report_to": "wandb", "weight_decay": 0.5, "save_total_limit": 3},
    )
    args = trainer_arguments(config, SFTConfig)
    assert args.report_to == ["wandb"] and args.weight_decay == 0.5 and args.save_total_limit == 3


def test_each_training_stage_checks_keys_against_its_own_trainer_class(tmp_path):
    base = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out")}
    build_config(QPOConfig, {**base, "trainer": {"label_smoothing": 0.5}})  # a DPOConfig field
    with pytest.raises(ConfigError, match="label_smoothing is not a SFTConfig field"):
        build_config(SFTStageConfig, {**base, "trainer": {"label_smoothing": 0.5}})
    with pytest.raises(ConfigError, match="packing is not a TrainingArguments field"):
        build_config(DifficultyTrainConfig, {**base, "trainer": {"packing": True}})
    build_config(QFTConfig, {"output": base["output"], "trainer": {"weight_decay": 0.1}})


def test_a_trainer_key_our_own_field_sets_names_that_field(tmp_path, capsys):
    code = main(
        ["sft", f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'out'}", "trainer={num_train_epochs: 2}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and "num_train_epochs is set by this stage's field 'epochs'; set that instead" in err
    assert not (tmp_path / "out").exists()


def test_trained_tokens_count_every_token_id_column_once_per_epoch():
    from types import SimpleNamespace

    from datasets import Dataset

    from scalequest.training import trained_tokens

    dataset = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "chosen_ids": [[1], [2, 3]], "labels": [1, 0]})
    trainer = SimpleNamespace(train_dataset=dataset.shuffle(seed=0).select([0, 1]), state=SimpleNamespace(epoch=2.0))
    assert trained_tokens(trainer) == (5 + 3) * 2
    assert trained_tokens(SimpleNamespace(train_dataset=Dataset.from_dict({"text": ["a"]}), state=trainer.state)) == 0
