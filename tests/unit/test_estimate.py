"""scalequest estimate: a pilot's survival and tokens scaled to N final pairs, GPU-hours from the throughput table
and each stage's model size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalequest import estimate
from scalequest.cli import main
from scalequest.config import ConfigError

from conftest import tiny_generation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_parameters_from_a_config_match_the_model():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scalequest.models import resolve_model

    path = Path(resolve_model("embedded"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    counted = sum(p.numel() for p in model.parameters())
    assert estimate.parameters(json.loads((path / "config.json").read_text())) == pytest.approx(counted, rel=1e-3)
    assert estimate.model_parameters("embedded") == pytest.approx(counted, rel=1e-3)
    assert estimate.parameters({"hidden_size": 8}) is None  # no layer count: unknown, not a guess


def manifest(stage: str, rows_in: int, rows_out: int, tokens_in: int = 0, tokens_out: int = 0, model=None) -> dict:
    models = {"engine.model": {"model": str(model), "revision": None}} if model else {}
    return {
        "stage": stage,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "models": models,
    }


@pytest.fixture
def pilot(tiny_model_dir):
    return [
        ("qft", manifest("qft", 50, 50, tokens_in=5000, model=tiny_model_dir)),
        ("generate-questions", manifest("generate-questions", 100, 80, 1000, 8000, tiny_model_dir)),
        ("filter-language", manifest("filter-language", 80, 40)),
        ("generate-responses", manifest("generate-responses", 40, 40, 2000, 16000, tiny_model_dir)),
        ("export", manifest("export", 40, 20)),
    ]


def test_stages_that_grow_with_the_dataset_are_scaled_to_the_pairs_asked_for(pilot, tiny_model_dir):
    table = estimate.load_throughput(None)
    rows, pilot_pairs = estimate.estimate(pilot, 2000, "A100", table, price=2.0)
    assert pilot_pairs == 20
    by_stage = {row["stage"]: row for row in rows}
    questions = by_stage["generate-questions"]
    assert (questions["rows_in"], questions["rows_out"], questions["survival"]) == (10000, 8000, 0.8)
    assert (questions["tokens_in"], questions["tokens_out"]) == (100_000, 800_000)
    # The formula: generated tokens at the 7B output rate scaled by model size, prompts at prefill_mfu of the peak.
    params, a100 = estimate.model_parameters(str(tiny_model_dir)), table.gpus["A100"]
    decode = a100.decode_tokens_per_second * a100.reference_parameters / params
    seconds = 800_000 / decode + 100_000 * 2 * params / (table.prefill_mfu * a100.peak_tflops * 1e12)
    assert questions["gpu_hours"] == pytest.approx(seconds / 3600)
    assert questions["cost"] == pytest.approx(2.0 * seconds / 3600)
    assert by_stage["filter-language"]["gpu_hours"] == 0.0  # no model: CPUs
    assert by_stage["export"]["rows_out"] == 2000
    # QFT does not grow with the dataset: its pilot figures stand.
    qft = by_stage["qft"]
    assert qft["rows_in"] == 50 and qft["gpu_hours"] == pytest.approx(
        5000 * 6 * params / (table.training_mfu * a100.peak_tflops * 1e12) / 3600
    )
    doubled = {row["stage"]: row for row in estimate.estimate(pilot, 4000, "A100", table, 2.0)[0]}
    assert doubled["generate-responses"]["gpu_hours"] == pytest.approx(2 * by_stage["generate-responses"]["gpu_hours"])
    assert doubled["qft"]["gpu_hours"] == pytest.approx(qft["gpu_hours"])
    on_h100 = {row["stage"]: row for row in estimate.estimate(pilot, 2000, "H100", table, 2.0)[0]}
    assert on_h100["generate-responses"]["gpu_hours"] < by_stage["generate-responses"]["gpu_hours"]
    text = estimate.markdown(rows, 2000, pilot_pairs, "A100", 2.0, table)
    assert "| Phase | Samples | GPU hours | Cost |" in text and "| Response generation | 4,000 |" in text
    assert "| Decontamination and export | 2,000 |" in text
    assert estimate.LAMBDA_VLLM in text


def test_a_model_of_unknown_size_is_marked_and_left_out_of_the_total(pilot):
    pilot[3][1]["models"] = {"engine.model": {"model": "gpt-4o-mini", "revision": None}}  # a remote server's model
    table = estimate.load_throughput(None)
    rows, pilot_pairs = estimate.estimate(pilot, 100, "A100", table, 1.0)
    assert {row["stage"]: row["gpu_hours"] for row in rows}["generate-responses"] is None
    assert "GPU-hours of generate-responses are unknown" in estimate.markdown(
        rows, 100, pilot_pairs, "A100", 1.0, table
    )


def test_bad_inputs_are_errors(pilot, tmp_path):
    table = estimate.load_throughput(None)
    with pytest.raises(ConfigError, match="--pairs"):
        estimate.estimate(pilot, 0, "A100", table, 1.0)
    with pytest.raises(ConfigError, match="unknown GPU 'V100'.*A100, H100"):
        estimate.estimate(pilot, 10, "V100", table, 1.0)
    pilot[-1][1]["rows_out"] = 0
    with pytest.raises(ConfigError, match="kept no rows"):
        estimate.estimate(pilot, 10, "A100", table, 1.0)
    override = tmp_path / "t.yaml"
    override.write_text("gpus:\n  A100: {decode_tokens_per_second: 5000}\n  L4: {peak_tflops: 121, source: me}\n")
    with pytest.raises(ConfigError, match="decode_tokens_per_second"):  # a new GPU needs every figure
        estimate.load_throughput(override)
    override.write_text("gpus:\n  A100: {decode_tokens_per_second: 5000}\nprefill_mfu: 0.6\n")
    table = estimate.load_throughput(override)
    assert table.gpus["A100"].decode_tokens_per_second == 5000 and table.gpus["A100"].peak_tflops == 312
    assert table.prefill_mfu == 0.6


def test_estimate_runs_the_pilot_then_projects(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "p.yaml"
    stages = {"generate-questions": tiny_generation(tiny_model_dir, num=6)}
    path.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "stages": stages}))
    # Without the pilot, an unfinished stage is one error line.
    assert main(["estimate", "-c", str(path), "--pairs", "600", "--no-pilot"]) == 2
    assert "generate-questions has not finished" in capsys.readouterr().err
    assert main(["estimate", "-c", str(path), "--pairs", "600", "--gpu", "H100"]) == 0
    out = capsys.readouterr().out
    finished = json.loads((tmp_path / "run" / "generate-questions" / "manifest.json").read_text())
    assert f"from a pilot of {finished['rows_out']} pairs" in out
    assert "| generate-questions | Question generation | " in out and "| 600 |" in out.replace(",", "")
    # A finished pilot is read, not rerun.
    assert main(["estimate", "-c", str(path), "--pairs", "600", "--no-pilot", "--gpu", "A100"]) == 0
    assert main(["estimate", "-c", str(path), "--pairs", "600", "--gpu", "TPU"]) == 2
    assert "unknown GPU 'TPU'" in capsys.readouterr().err
