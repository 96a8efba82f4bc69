"""scalequest cost: the paper's Table 4 layout from the manifests of a run folder."""

from __future__ import annotations

import json

import pytest

from scalequest.cli import main
from scalequest.cost import cost_markdown, cost_rows
from scalequest.io import DataError


def write_manifest(run, stage, **fields):
    """A finished `stage` in the run folder `run`: its folder, named after it, with a manifest of `fields`."""
    folder = run / stage
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, **fields}))


A100 = ["NVIDIA A100"]


def test_phases_sum_gpu_hours_and_price(tmp_path):
    write_manifest(tmp_path, "generate-questions", rows_out=1000, gpu_hours=2.0, wall_seconds=7200, devices=A100)
    write_manifest(tmp_path, "filter-language", rows_out=800, gpu_hours=0.0, wall_seconds=10, devices=["cpu"])
    write_manifest(tmp_path, "filter-solvability", rows_out=600, gpu_hours=1.5, wall_seconds=5400, devices=A100)
    write_manifest(tmp_path, "qft", rows_in=256, gpu_hours=0.25, wall_seconds=900, devices=A100)
    (tmp_path / "unfinished").mkdir()  # no manifest: not counted
    rows = cost_rows(tmp_path, price_per_gpu_hour=2.0)
    by_phase = {row["phase"]: row for row in rows}
    assert [row["phase"] for row in rows] == [
        "Question fine-tuning (QFT)",
        "Question generation",
        "Question filtering",
        "Total",
    ]
    assert by_phase["Question filtering"]["samples"] == 600  # the phase's last stage
    assert by_phase["Question filtering"]["gpu_hours"] == pytest.approx(1.5)
    assert by_phase["Question fine-tuning (QFT)"]["samples"] == 256
    assert by_phase["Total"]["gpu_hours"] == pytest.approx(3.75)
    assert by_phase["Total"]["cost"] == pytest.approx(7.5)
    assert "| Total |  | 3.7500 | 7.50 |" in cost_markdown(rows, 2.0)


def test_cost_command_and_errors(tmp_path, capsys):
    write_manifest(tmp_path, "generate-questions", rows_out=10, gpu_hours=1.0, wall_seconds=3600)
    assert main(["cost", str(tmp_path), "--price", "1.5"]) == 0
    assert "| Question generation | 10 | 1.0000 | 1.50 |" in capsys.readouterr().out
    with pytest.raises(DataError, match="holds no finished stage"):
        cost_rows(tmp_path / "generate-questions")
    assert main(["cost", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
