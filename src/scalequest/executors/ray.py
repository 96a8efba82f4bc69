"""Run a row-wise stage's pending shards on a Ray cluster: Ray Data actors, one stage (one engine) each.

The driver feeds the runner's pending shards, a few per worker at a time, into a Ray queue; one
long-lived Ray Data read task turns each into a block, so neither the driver nor the object store
holds more than a few shards, however large the input. Each actor of the `map_batches` pool calls
`stage.setup()` once, then processes whole shards and writes them itself (the output folder must be
on a filesystem every node sees); only the small per-shard stats travel back to the progress bar.
A worker that dies is restarted and its shard retried; a killed driver is resumed by rerunning.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import socket
import threading
import warnings
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Queue
from tqdm.auto import tqdm

from scalequest.config import ConfigError
from scalequest.stage import RowStage, Shard, run_shard

READ_CPUS = 0.1  # the one read task mostly waits on the queue; a whole CPU would starve small nodes
SHARDS_IN_FLIGHT_PER_WORKER = 4  # fed but not yet finished: keeps every worker busy, bounds memory
SHARD_RETRIES = 3  # a shard whose worker died this many more times fails the stage (rerun resumes it)
CONNECT_TIMEOUT_S = 5.0


def connect(address: str | None) -> None:
    """Join the cluster at `address` (None: RAY_ADDRESS or a local one); reuse Ray if already initialised."""
    if address not in (None, "auto", "local"):
        # ray.init retries an unreachable address for minutes; a plain TCP connect fails in seconds.
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"executor.address={address}: no Ray cluster reachable there ({err}); start one with "
                "`ray start --head` on the head node, then pass executor.address=HOST:6379"
            ) from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address)
    except ConnectionError as err:  # "auto" with no cluster running
        raise ConfigError(f"executor.address={address}: {err} (start one with `ray start --head`)") from None


def check_cluster(stage: RowStage) -> tuple[int, float]:
    """Connect, then (actors, GPUs per actor) from the config and the cluster; refuses what it cannot hold."""
    executor = stage.config.executor
    connect(executor.address)
    resources = ray.cluster_resources()
    cluster_gpus, cluster_cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    gpus = executor.num_gpus_per_worker
    if gpus is None:  # model-less stages and remote servers (openai) need no GPU
        gpus = stage.gpus_per_replica() if cluster_gpus else 0
    workers = executor.num_workers or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
    if workers * gpus > cluster_gpus:
        raise ConfigError(
            f"executor asks for {workers * gpus:g} GPUs ({workers} workers x {gpus:g}) but the Ray cluster has "
            f"{cluster_gpus:g}; lower executor.num_workers or executor.num_gpus_per_worker"
        )
    if gpus > 1:
        if gpus != int(gpus):
            raise ConfigError(f"executor.num_gpus_per_worker={gpus:g}: above 1 it must be a whole number")
        per_node = max((node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if gpus > per_node:
            raise ConfigError(f"a worker needs {gpus:g} GPUs on one node, but the largest Ray node has {per_node:g}")
    cpus = workers * executor.num_cpus_per_worker + READ_CPUS
    if cpus > cluster_cpus:  # actors holding every CPU starve the read task: the run would hang
        raise ConfigError(
            f"executor asks for {cpus:g} CPUs ({workers} workers x {executor.num_cpus_per_worker:g}, plus "
            f"{READ_CPUS:g} to read) but the Ray cluster has {cluster_cpus:g}; lower executor.num_cpus_per_worker"
        )
    return workers, gpus


def worker_resources(stage: RowStage, gpus: float) -> tuple[RowStage, dict]:
    """The stage the actors get and their GPU arguments; tensor-parallel vLLM gets a placement group."""
    engine = getattr(stage.config, "engine", None)
    if gpus <= 1 or engine is None or engine.engine != "vllm":
        return stage, {"num_gpus": gpus}
    # As in vLLM's and Ray's own Ray Data examples: the actor takes no GPU itself but runs in a
    # placement group of one-GPU bundles on one node, and vLLM's Ray backend puts its workers there.
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cpus = stage.config.executor.num_cpus_per_worker

    def placement_group() -> dict:
        group = ray.util.placement_group([{"GPU": 1, "CPU": cpus}] * int(gpus), strategy="STRICT_PACK")
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        }

    # The actors' copy only: the driver's config (hashed, saved in the manifest) stays as the user wrote it.
    stage = copy.copy(stage)
    kwargs = {"distributed_executor_backend": "ray", **engine.engine_kwargs}
    stage.config = stage.config.model_copy(update={"engine": engine.model_copy(update={"engine_kwargs": kwargs})})
    return stage, {"num_gpus": 0, "ray_remote_args_fn": placement_group}


class QueueSource(Datasource):
    """One read task yielding one block per shard taken from the queue, until the end marker (None)."""

    def __init__(self, queue: Queue):
        super().__init__()
        self.queue = queue

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        import pyarrow as pa

        queue = self.queue

        def read():
            while (shard := queue.get()) is not None:
                yield pa.table({"index": [shard.index], "shard": [pickle.dumps(shard)]})

        return [ReadTask(read, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None))]


class ShardWorker:
    """A Ray Data actor: sets the stage up once, then processes and writes one shard per batch."""

    def __init__(self, stage: RowStage, out: str):
        self.stage, self.out, self.ready = stage, Path(out), False
        stage.setup()
        self.ready = True

    def __call__(self, batch: dict) -> dict:
        stats = []
        for blob in batch["shard"]:
            shard = pickle.loads(blob)
            stats.append(json.dumps(run_shard(self.stage, shard, self.out)))
        return {"index": batch["index"], "stats": stats}

    def __del__(self):  # Ray Data calls it when it shuts the actor down
        if getattr(self, "ready", False):
            self.stage.teardown()


def feed(
    shards: Iterable[Shard],
    queue: Queue,
    credits: threading.Semaphore,
    stop: threading.Event,
    fed: set[int],
    errors: list,
) -> None:
    """Driver thread: put pending shards into the queue, one per credit (each finished shard returns one)."""
    try:
        for shard in shards:
            credits.acquire()
            if stop.is_set():
                return
            queue.put(shard)
            fed.add(shard.index)
    except BaseException as err:  # a bad input row, or the queue shut down because the run failed
        errors.append(err)
    finally:
        try:
            queue.put(None)
        except Exception:
            pass


def cause(err: Exception) -> str:
    """The worker's own exception line from a Ray error, whose text holds the tracebacks of every layer."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line) and not line.startswith("ray.")]
    return raised[-1] if raised else lines[0] if lines else type(err).__name__


def run_ray(stage: RowStage, shards: Iterable[Shard], out: Path, total_rows: int, done_rows: int = 0) -> None:
    config = stage.config
    shards = iter(shards)
    first = next(shards, None)
    if first is None:  # nothing left to do: no cluster needed
        return
    workers, gpus = check_cluster(stage)
    worker_stage, gpu_kwargs = worker_resources(stage, gpus)
    window = SHARDS_IN_FLIGHT_PER_WORKER * workers
    queue, credits, stop = Queue(actor_options={"num_cpus": 0}), threading.Semaphore(window), threading.Event()
    fed: set[int] = set()
    errors: list[BaseException] = []
    feeder = threading.Thread(
        target=feed, args=(chain([first], shards), queue, credits, stop, fed, errors), daemon=True
    )

    dataset = ray.data.read_datasource(QueueSource(queue), override_num_blocks=1, num_cpus=READ_CPUS)
    with warnings.catch_warnings():  # Ray 2.60 deprecates these remote args but offers nothing else for them
        warnings.simplefilter("ignore", DeprecationWarning)
        results = dataset.map_batches(
            ShardWorker,
            fn_constructor_args=(worker_stage, str(out)),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=config.executor.num_cpus_per_worker,
            max_restarts=-1,
            max_task_retries=SHARD_RETRIES,
            **gpu_kwargs,
        )
    context = results.context
    context.enable_progress_bars = False  # ours below looks like the local executor's
    context.print_on_execution_start = False
    context.execution_no_progress_timeout_s = -1  # one shard (or one engine start) may take over the 30 min default
    context.target_max_block_size = 1  # never merge shards into one block: each goes to its own actor task

    bar = tqdm(
        total=total_rows,
        initial=done_rows,
        desc=config.stage,
        unit="row",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    tokens, finished = 0, set()
    feeder.start()
    try:
        for row in results.iter_rows():
            stats = json.loads(row["stats"])
            finished.add(int(row["index"]))
            credits.release()
            tokens += stats["tokens_out"]
            bar.update(stats["rows_in"])
            bar.set_postfix(tok_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):.1f}", refresh=False)
    except ray.exceptions.RayError as err:
        raise RuntimeError(
            f"{config.stage}: a Ray worker failed: {cause(err)}; finished shards are kept, rerun to resume"
        ) from err
    finally:
        bar.close()
        stop.set()
        queue.shutdown(force=True)
        credits.release(window)  # unblocks the feeder when the run failed
        feeder.join()
    if errors:
        raise errors[0]
    if fed - finished:  # never let the runner write a manifest over a silently partial output
        raise RuntimeError(
            f"{config.stage}: shards {sorted(fed - finished)[:10]} came back from no Ray worker; rerun to finish them"
        )
