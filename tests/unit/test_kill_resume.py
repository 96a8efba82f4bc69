"""The kill -9 guarantee: a stage killed at any moment and rerun ends with exactly the rows of an
uninterrupted run: no row lost, none duplicated, none changed, no temporary file left behind.

Real processes (`python -m scalequest.cli generate-questions ...`) on the tiny random Llama, killed
with SIGKILL three times at different points, then rerun to completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_generation
from scalequest import io
from scalequest.stages.generate_questions import GenerateQuestionsConfig, id_prefix

NUM, SHARD_SIZE, SHARDS = 40, 2, 20
KILL_AFTER = (2, 5, 9)  # shard files present when each kill lands (at least)
START_TIMEOUT = 120.0  # seconds for a fresh process to import torch, load the model and write shards

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def command(out: Path, model_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scalequest.cli",
        "generate-questions",
        f"output={out}",
        f"num={NUM}",
        f"shard_size={SHARD_SIZE}",
        f"engine.model={model_dir}",
        "sampling.max_new_tokens=24",
        "progress=false",
    ]


def environment() -> dict[str, str]:
    # One thread per process: the tiny model runs fastest so, and the reference run can share the
    # 2 cores with the killed runs. Every run uses the same settings, so the numerics match.
    return dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )


def shards(out: Path) -> int:
    return len(list(out.glob("shard-*.jsonl"))) if out.is_dir() else 0


def start(out: Path, model_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command(out, model_dir), cwd=out.parent, env=environment(), stdout=handle, stderr=subprocess.STDOUT
        )


def kill_when(proc: subprocess.Popen, out: Path, at_least: int, log: Path) -> int:
    """SIGKILL `proc` as soon as `at_least` shard files exist; return how many there were."""
    deadline = time.monotonic() + START_TIMEOUT
    while shards(out) < at_least:
        if proc.poll() is not None:
            pytest.fail(
                f"run ended (rc {proc.returncode}) before {at_least} shards existed:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no {at_least} shards after {START_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return shards(out)


def test_sigkill_at_three_moments_then_resume_gives_the_uninterrupted_rows(tmp_path, tiny_model_dir):
    reference_out, out = tmp_path / "reference", tmp_path / "killed"
    # The uninterrupted run, in parallel with the killed ones.
    reference_log = tmp_path / "reference.log"
    reference = start(reference_out, tiny_model_dir, reference_log)
    log = tmp_path / "killed.log"
    try:
        seen = []
        for target in KILL_AFTER:
            goal = max(target, shards(out) + 1)  # every run must get further than the last
            proc = start(out, tiny_model_dir, log)
            count = kill_when(proc, out, goal, log)
            assert proc.returncode == -signal.SIGKILL, "the run finished before the kill landed"
            assert not (out / io.MANIFEST).exists(), "a killed run must not look finished"
            seen.append(count)
        assert seen == sorted(seen) and len(set(seen)) == 3 and seen[-1] < SHARDS, seen

        final = subprocess.run(
            command(out, tiny_model_dir), cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300
        )
        assert final.returncode == 0, final.stderr[-3000:]
        assert reference.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()

    expected = io.load_rows(reference_out)
    rows = io.load_rows(out)
    ids = [row["id"] for row in rows]
    assert len(expected) == NUM
    assert len(ids) == len(set(ids)) == NUM, "duplicated or missing rows"
    assert set(ids) == {row["id"] for row in expected}
    config = GenerateQuestionsConfig(
        output=out,
        num=NUM,
        shard_size=SHARD_SIZE,
        engine={"model": str(tiny_model_dir)},
        sampling={"max_new_tokens": 24},
    )
    assert ids == [f"{id_prefix(config)}{i:08d}" for i in range(NUM)]
    assert rows == expected, "resumed rows differ from the uninterrupted run"

    assert sorted(p.name for p in out.glob("shard-*.jsonl")) == [f"shard-{i:05d}.jsonl" for i in range(SHARDS)]
    assert not list(out.rglob("*.tmp-*")), "temporary files left behind"
    assert not list(reference_out.rglob("*.tmp-*"))
    manifest = json.loads((out / io.MANIFEST).read_text())
    reference_manifest = json.loads((reference_out / io.MANIFEST).read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == NUM
    assert manifest["shards"] == SHARDS
    for key in ("tokens_in", "tokens_out", "dropped", "counts", "config_hash"):
        assert manifest[key] == reference_manifest[key], key
    assert "generate-questions: 40 in -> 40 out" in final.stdout


def test_sigkill_in_the_middle_of_run_then_rerun_gives_the_same_final_ids(tmp_path, tiny_model_dir):
    """`scalequest run` killed while its first stage works, then rerun: the final stage's row ids match."""
    pipeline = tmp_path / "pipeline.yaml"

    def run(output_dir: Path, kill_at_shards: int | None = None) -> None:
        pipeline.write_text(
            json.dumps(
                {
                    "output_dir": str(output_dir),
                    "stages": {
                        "generate-questions": tiny_generation(tiny_model_dir, num=12, shard_size=2, max_new_tokens=12),
                        "filter-language": {"ascii_only": False, "progress": False},
                    },
                }
            )
        )
        log = tmp_path / "run.log"
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scalequest.cli", "run", "-c", str(pipeline)],
                cwd=tmp_path,
                env=environment(),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        if kill_at_shards is None:
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        else:
            kill_when(proc, output_dir / "generate-questions", kill_at_shards, log)

    run(tmp_path / "reference")
    run(tmp_path / "killed", kill_at_shards=2)
    assert not (tmp_path / "killed" / "filter-language").exists()
    run(tmp_path / "killed")
    final = [row["id"] for row in io.load_rows(tmp_path / "killed" / "filter-language")]
    assert final and final == [row["id"] for row in io.load_rows(tmp_path / "reference" / "filter-language")]
    assert len(final) == len(set(final))
