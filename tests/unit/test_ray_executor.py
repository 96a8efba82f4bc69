"""The Ray executor: same rows as the local executor, resume after a killed driver, a dying worker's
shard retried, a node lost mid-stage losing no shard, and bad executor settings refused up front in one line.

One in-process Ray cluster serves the whole module: a 2-CPU head node, to which the node-loss test adds
worker nodes for its own run; the killed and resumed drivers are separate processes that join it through
its address. Row stages: generate-questions on the tiny random Llama from conftest, filter-language on
synthetic JSONL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from scalequest import io  # noqa: E402
from scalequest.config import ConfigError  # noqa: E402
from scalequest.runner import run_row_stage, run_stage  # noqa: E402
from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig  # noqa: E402
from scalequest.stages.generate_questions import (  # noqa: E402
    GenerateQuestions,
    GenerateQuestionsConfig,
    id_prefix,
)

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 180.0  # seconds for a fresh driver to import, join Ray, start its actors and write shards


# A node killed outright is declared dead in about 1.5 s, not Ray's default of 15 s or more, so that its
# actors restart elsewhere within the node-loss test.
HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def ray_cluster():
    """One in-process Ray cluster for all tests here: a head node of 2 CPUs (started once, stopped when they
    are done, so it does not hold memory and CPU through the rest of the session), to which a test may add
    worker nodes; its workers can import this module's stages."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": HEALTH_CHECKS},
    )
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def ray_address(ray_cluster):
    return ray_cluster.address


# Ray gives actors with under one CPU one thread; the local runs here use one too, so numerics match.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def questions_file(path: Path, count: int = 60) -> Path:
    rows = [{"question": f"What is {i % 15} plus 2?"} for i in range(count)]  # repeats: duplicates to drop
    rows[7]["question"] = "Combien font 2 + 2 ? Réponds."
    rows[11]["question"] = "   "
    return write_jsonl(path, rows)


def gen_config(output: Path, model_dir: Path, **overrides) -> GenerateQuestionsConfig:
    values = dict(
        output=output,
        num=12,
        shard_size=3,
        engine={"model": str(model_dir)},
        sampling={"max_new_tokens": 8},
        progress=False,
    )
    return GenerateQuestionsConfig(**{**values, **overrides})


RAY = {"kind": "ray", "num_workers": 2}


def test_generate_questions_under_ray_gives_the_local_rows(tmp_path, tiny_model_dir, ray_address):
    local = run_row_stage(GenerateQuestions, gen_config(tmp_path / "local", tiny_model_dir))
    started = time.monotonic()
    remote = run_row_stage(GenerateQuestions, gen_config(tmp_path / "ray", tiny_model_dir, executor=RAY))
    print(f"ray run: {time.monotonic() - started:.1f}s")
    assert io.load_rows(tmp_path / "ray") == io.load_rows(tmp_path / "local")
    assert len(io.load_rows(tmp_path / "ray")) == 12
    for key in ("rows_in", "rows_out", "shards", "tokens_in", "tokens_out", "counts", "config_hash"):
        assert remote[key] == local[key], key
    assert not list((tmp_path / "ray").rglob("*.tmp-*"))


def test_filter_language_under_ray_gives_the_local_rows(tmp_path, ray_address):
    source = questions_file(tmp_path / "questions.jsonl")
    local = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=source, output=tmp_path / "local", shard_size=7, progress=False)
    )
    remote = run_row_stage(
        FilterLanguage,
        FilterLanguageConfig(input=source, output=tmp_path / "ray", shard_size=7, progress=False, executor="ray"),
    )
    assert io.load_rows(tmp_path / "ray") == io.load_rows(tmp_path / "local")
    assert remote["dropped"] == local["dropped"] == {"duplicate": 43, "non_ascii": 1, "empty": 1}
    assert remote["shards"] == local["shards"] == 9


class DiesOnce(FilterLanguage):
    """filter-language whose worker process dies the first time it reaches shard 1."""

    marker: Path

    def process(self, shard):
        if shard.index == 1 and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return super().process(shard)


def test_a_worker_dying_mid_stage_has_its_shard_retried(tmp_path, ray_address):
    source = questions_file(tmp_path / "questions.jsonl")
    expected = run_row_stage(
        FilterLanguage, FilterLanguageConfig(input=source, output=tmp_path / "local", shard_size=7, progress=False)
    )
    stage = DiesOnce(
        FilterLanguageConfig(input=source, output=tmp_path / "ray", shard_size=7, progress=False, executor=RAY)
    )
    stage.marker = tmp_path / "died"
    manifest = run_stage(stage)
    assert stage.marker.exists(), "the worker never died"
    assert io.load_rows(tmp_path / "ray") == io.load_rows(tmp_path / "local")
    assert manifest["rows_out"] == expected["rows_out"] and manifest["shards"] == expected["shards"]


def test_too_many_gpus_or_cpus_are_refused_up_front(tmp_path, ray_address):
    source = questions_file(tmp_path / "questions.jsonl", count=20)
    for executor, message in [
        ({"kind": "ray", "num_gpus_per_worker": 1}, "asks for 1 GPUs (1 workers x 1) but the Ray cluster has 0"),
        (
            {"kind": "ray", "num_workers": 3, "num_cpus_per_worker": 1},
            "asks for 3 CPUs (3 workers x 1) but the Ray cluster has 2",
        ),
    ]:
        out = tmp_path / f"out-{len(message)}"
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_row_stage(
                FilterLanguage, FilterLanguageConfig(input=source, output=out, progress=False, executor=executor)
            )
        assert not list(out.glob("shard-*"))


def test_gpus_per_actor_come_from_whichever_models_the_stage_loads(tmp_path, tiny_model_dir, ray_address, monkeypatch):
    """Engines, the difficulty regressor (filter-difficulty's scoring pass) and the reward model size the actors;
    CPU-pinned models and remote engines do not."""
    from scalequest.executors import ray as ray_executor
    from scalequest.stages.filter_difficulty import ScoreDifficulty, ScoreDifficultyConfig
    from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig
    from scalequest.stages.reward_select import RewardSelect, RewardSelectConfig

    source, executor = questions_file(tmp_path / "q.jsonl"), {"kind": "ray", "num_workers": 2}
    stages = {
        "filter-language": FilterLanguage(FilterLanguageConfig(input=source, output=tmp_path / "a", executor=executor)),
        "difficulty": ScoreDifficulty(
            ScoreDifficultyConfig(input=source, output=tmp_path / "b", regressor="r", executor=executor)
        ),
        "difficulty-cpu": ScoreDifficulty(
            ScoreDifficultyConfig(
                input=source, output=tmp_path / "c", regressor={"model": "r", "device": "cpu"}, executor=executor
            )
        ),
        "reward-vllm": RewardSelect(
            RewardSelectConfig(
                input=source,
                output=tmp_path / "d",
                executor=executor,
                reward={"backend": "vllm", "tensor_parallel_size": 2},
            )
        ),
        "qpo-data": BuildQPOData(
            QPODataConfig(
                output=tmp_path / "e",
                executor=executor,
                generator={"engine": "vllm", "model": "g", "tensor_parallel_size": 2},
                optimizer={"engine": "openai", "model": "gpt-4o-mini"},
            )
        ),
    }
    assert {name: stage.gpus_per_replica() for name, stage in stages.items()} == {
        "filter-language": 0,
        "difficulty": 1,
        "difficulty-cpu": 0,
        "reward-vllm": 2,
        "qpo-data": 2,
    }
    monkeypatch.setattr(ray_executor.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert ray_executor.check_cluster(stages["filter-language"]) == (2, 0)
    assert ray_executor.check_cluster(stages["difficulty"]) == (2, 1)
    with pytest.raises(ConfigError, match=r"asks for 4 GPUs \(2 workers x 2\) but the Ray cluster has 2"):
        ray_executor.check_cluster(stages["reward-vllm"])


def test_an_unreachable_address_fails_fast_with_one_line(tmp_path, ray_address):
    source = questions_file(tmp_path / "questions.jsonl", count=20)
    config = FilterLanguageConfig(
        input=source, output=tmp_path / "out", progress=False, executor={"kind": "ray", "address": "127.0.0.1:1"}
    )
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        run_row_stage(FilterLanguage, config)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert "executor.address=127.0.0.1:1" in message and "ray start --head" in message


# --- a killed driver, resumed ----------------------------------------------------------------------

NUM, SHARD_SIZE = 40, 2


def driver_command(out: Path, model_dir: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "scalequest.cli", "generate-questions",
        f"output={out}", f"num={NUM}", f"shard_size={SHARD_SIZE}", f"engine.model={model_dir}",
        "sampling.max_new_tokens=8", "progress=false",
        "executor.kind=ray", f"executor.address={address}", "executor.num_workers=2",
    ]  # fmt: skip


def shard_count(out: Path) -> int:
    return len(list(out.glob("shard-*.jsonl"))) if out.is_dir() else 0


def test_a_killed_ray_driver_resumes_to_the_uninterrupted_local_rows(tmp_path, tiny_model_dir, ray_address):
    out, log = tmp_path / "killed", tmp_path / "driver.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "ab") as handle:
        driver = subprocess.Popen(
            driver_command(out, tiny_model_dir, ray_address), env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + START_TIMEOUT
    while shard_count(out) < 3:
        if driver.poll() is not None or time.monotonic() > deadline:
            driver.kill()
            pytest.fail(f"no 3 shards from the Ray driver (rc {driver.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed_at = shard_count(out)
    assert killed_at < NUM // SHARD_SIZE, "the driver finished before the kill landed"
    assert not (out / io.MANIFEST).exists()

    final = subprocess.run(
        driver_command(out, tiny_model_dir, ray_address), env=env, capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr[-3000:]
    reference = run_row_stage(
        GenerateQuestions, gen_config(tmp_path / "reference", tiny_model_dir, num=NUM, shard_size=SHARD_SIZE)
    )
    rows = io.load_rows(out)
    prefix = id_prefix(gen_config(out, tiny_model_dir, num=NUM, shard_size=SHARD_SIZE))  # executor: not in the ids
    assert [row["id"] for row in rows] == [f"{prefix}{i:08d}" for i in range(NUM)]
    assert rows == io.load_rows(tmp_path / "reference")
    manifest = json.loads((out / io.MANIFEST).read_text())
    assert manifest["rows_out"] == NUM and manifest["shards"] == NUM // SHARD_SIZE
    assert manifest["tokens_out"] == reference["tokens_out"]
    assert not list(out.rglob("*.tmp-*"))
    print(f"killed with {killed_at} of {NUM // SHARD_SIZE} shards written")


class AlwaysDies(FilterLanguage):
    def process(self, shard):
        if shard.index == 1:
            os._exit(1)
        return super().process(shard)


def test_a_shard_that_always_kills_its_worker_fails_the_stage_after_a_few_retries(tmp_path, ray_address):
    source = questions_file(tmp_path / "questions.jsonl", count=20)
    out = tmp_path / "ray"
    with pytest.raises(RuntimeError, match="filter-language: a Ray worker failed: .*rerun to resume"):
        run_stage(
            AlwaysDies(FilterLanguageConfig(input=source, output=out, shard_size=5, progress=False, executor=RAY))
        )
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-00000.jsonl",
        "shard-00002.jsonl",
        "shard-00003.jsonl",
    ]
    assert not (out / io.MANIFEST).exists()


# --- a node lost mid-stage -------------------------------------------------------------------------------------

NODE_ROWS, NODE_SHARD_SIZE, SHARD_SECONDS = 32, 2, 0.4
STAGE_TIMEOUT = 120.0  # far above the ~10 s the stage takes: a hang fails the test instead of blocking the suite


class SlowFilter(FilterLanguage):
    """filter-language taking SHARD_SECONDS per shard, marking in `marks` on which node (and process) each shard
    started and ended."""

    marks: Path

    def process(self, shard):
        where = f"{shard.index}.{ray.get_runtime_context().get_node_id()}.{os.getpid()}"
        (self.marks / f"{where}.start").touch()
        time.sleep(SHARD_SECONDS)
        result = super().process(shard)
        (self.marks / f"{where}.end").touch()
        return result


def marked(marks: Path, suffix: str) -> set[tuple[int, str, int]]:
    """(shard, node, process) of each shard that started (suffix `start`) or ended (`end`) somewhere."""
    return {
        (int(i), node, int(pid)) for i, node, pid, _ in (path.name.split(".") for path in marks.glob(f"*.{suffix}"))
    }


def test_a_node_removed_mid_stage_loses_no_shard_and_duplicates_none(tmp_path, ray_cluster):
    """Two actors, each on its own worker node (3 CPUs each: the 2-CPU head holds none), and a spare node. The
    node of a shard that has just started is killed outright, its actor's process with it, as when a machine
    goes: that shard and the other one its actor held are redone elsewhere while Ray restarts the actor on
    the spare, and the output is the local run's."""
    rows = [{"id": f"r{i:03d}", "question": f"What is {i} plus 2?"} for i in range(NODE_ROWS)]
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    local = run_row_stage(
        FilterLanguage,
        FilterLanguageConfig(input=source, output=tmp_path / "local", shard_size=NODE_SHARD_SIZE, progress=False),
    )
    out, marks = tmp_path / "ray", tmp_path / "marks"
    marks.mkdir()
    stage = SlowFilter(
        FilterLanguageConfig(
            input=source,
            output=out,
            shard_size=NODE_SHARD_SIZE,
            progress=False,
            executor={"kind": "ray", "num_workers": 2, "num_cpus_per_worker": 3},
        )
    )
    stage.marks = marks
    nodes = [ray_cluster.add_node(num_cpus=3) for _ in range(3)]
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["manifest"] = run_stage(stage)
        except BaseException as err:
            outcome["error"] = err

    driver = threading.Thread(target=run, daemon=True)
    try:
        started_at = time.monotonic()
        driver.start()
        deadline = time.monotonic() + STAGE_TIMEOUT
        while not (started := [mark for mark in marked(marks, "start") - marked(marks, "end") if mark[0] >= 4]):
            assert driver.is_alive() and time.monotonic() < deadline, f"no shard 4 or later started: {outcome}"
            time.sleep(0.01)
        interrupted, victim_id, actor_pid = started[0]
        victim = next(node for node in nodes if node.node_id == victim_id)
        os.kill(actor_pid, signal.SIGKILL)  # a raylet killed alone leaves its workers running for a moment
        ray_cluster.remove_node(victim, allow_graceful=False)
        nodes.remove(victim)
        written_at_removal = shard_count(out)
        driver.join(timeout=max(1.0, deadline - time.monotonic()))
        assert not driver.is_alive(), f"the Ray stage hung after its node went (shards written: {shard_count(out)})"
        print(f"stage: {time.monotonic() - started_at:.1f}s, its node removed after {written_at_removal} shards")
    finally:
        for node in nodes:
            ray_cluster.remove_node(node)
    assert "error" not in outcome, outcome.get("error")
    shards = NODE_ROWS // NODE_SHARD_SIZE
    assert written_at_removal < shards, "the stage finished before the node went"
    assert (interrupted, victim_id, actor_pid) not in marked(marks, "end"), "the shard finished before its node went"
    assert any(i == interrupted and node != victim_id for i, node, _ in marked(marks, "end")), "never redone"
    assert [row["id"] for row in io.load_rows(out)] == [row["id"] for row in rows]  # each input row exactly once
    assert io.load_rows(out) == io.load_rows(tmp_path / "local")
    manifest = outcome["manifest"]
    assert manifest["rows_in"] == manifest["rows_out"] == local["rows_out"] == NODE_ROWS
    assert manifest["shards"] == shard_count(out) == shards
    assert not list(out.rglob("*.tmp-*"))
