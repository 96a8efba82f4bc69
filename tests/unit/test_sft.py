"""sft: TRL SFTTrainer on a tiny random model lowers the loss and saves a directory every engine loads."""

from __future__ import annotations

import json

import pytest

from conftest import sft_input_and_labels, tiny_training_config, write_jsonl
from scalequest.config import engine_config
from scalequest.engines import SamplingParams
from scalequest.engines.hf import HFEngine
from scalequest.io import DataError
from scalequest.stages import sft


def write_pairs(path, n=16):
    rows = [
        {"query": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}. The answer is \\boxed{{{2 * i}}}."}
        for i in range(n)
    ]
    return write_jsonl(path, rows)


def config(tmp_path, model, **overrides):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    fields = dict(input=pairs, output=tmp_path / "sft", model=str(model), epochs=4, learning_rate=1e-2, max_length=64)
    return tiny_training_config(sft.SFTStageConfig, fields, **overrides)


def test_sft_lowers_loss_and_saves_a_loadable_model(tmp_path, tiny_model_dir):
    manifest = sft.run(config(tmp_path, tiny_model_dir))
    assert manifest["steps"] == 16
    assert manifest["last_logged_loss"] < manifest["first_logged_loss"] * 0.8
    assert manifest["tokens_in"] > 4 * 16 * 8  # the tokens it trained on: 16 examples of 8+ tokens, 4 epochs
    out = tmp_path / "sft"
    assert (out / "model.safetensors").is_file() and (out / "manifest.json").is_file()
    engine = HFEngine(engine_config(model=str(out)))
    completions = engine.generate(
        [[{"role": "user", "content": "What is 3 plus 3?"}]], SamplingParams(temperature=0, max_new_tokens=8)
    )
    assert len(completions[0]) == 1
    # Finished with the same config: skipped, the manifest is not rewritten.
    assert sft.run(config(tmp_path, tiny_model_dir))["finished_at"] == manifest["finished_at"]


def test_sft_masks_the_prompt(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    cfg = config(tmp_path, tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = sft.build_dataset(cfg, tokenizer)
    input_ids, labels = sft_input_and_labels(tmp_path, tiny_model_dir, tokenizer, dataset)
    masked = tokenizer.decode([t for t, label in zip(input_ids, labels) if label == -100])
    trained = tokenizer.decode([label for label in labels if label != -100])
    assert "What is 0 plus 0?" in masked and "boxed" not in masked
    assert "The answer is" in trained and "What is" not in trained
    assert trained.rstrip().endswith("<|im_end|>")  # the end of the turn is learned too


def test_sft_with_lora_merges_adapters(tmp_path, tiny_model_dir):
    manifest = sft.run(config(tmp_path, tiny_model_dir, lora={"r": 4, "alpha": 8, "dropout": 0.0}, epochs=1))
    assert manifest["steps"] == 4
    saved = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert saved["model_type"] == "llama"
    assert not (tmp_path / "sft" / "adapter_config.json").exists()  # merged into plain weights


def test_sft_names_missing_field(tmp_path, tiny_model_dir):
    with pytest.raises(DataError, match="field 'answer'"):
        sft.run(config(tmp_path, tiny_model_dir, response_field="answer"))
    assert not (tmp_path / "sft" / "checkpoints").exists()


class Killed(Exception):
    pass


def test_a_killed_training_resumes_from_its_last_checkpoint_then_drops_the_checkpoints(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    from transformers import TrainerCallback

    from scalequest.training import run_training

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Killed

    def killed_run_training(config, build_trainer, **kwargs):
        def build():
            trainer = build_trainer()
            trainer.add_callback(KillAtStep3())
            return trainer

        return run_training(config, build, **kwargs)

    cfg = config(tmp_path, tiny_model_dir, max_steps=4, save_steps=2)
    out = tmp_path / "sft"
    monkeypatch.setattr(sft, "run_training", killed_run_training)
    with pytest.raises(Killed):
        sft.run(cfg)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "manifest.json").exists()

    monkeypatch.undo()
    with caplog.at_level("INFO", logger="scalequest"):
        manifest = sft.run(cfg)
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert manifest["steps"] == 4 and (out / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists()  # finished: the checkpoints (weights + optimizer state) are gone

    kept = sft.run(config(tmp_path, tiny_model_dir, max_steps=4, save_steps=2, keep_checkpoints=True), force=True)
    assert kept["config_hash"] == manifest["config_hash"] and (out / "checkpoints" / "checkpoint-4").is_dir()
