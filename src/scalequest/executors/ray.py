"""Run a row-wise stage's pending shards on a Ray cluster: a pool of Ray actors, one stage (one engine) each.

No shard is lost with a task, an actor or a node, because the driver alone decides what is pending, in
flight and finished, and a task carries its whole input. The driver reads the runner's pending shards lazily,
one whenever an actor has room (`SHARDS_PER_WORKER` per actor: one running, one ready to start), puts it
into the object store and calls `actor.run(shard)` with that reference. An object the driver puts is owned
by the driver and kept on the driver's node, so a worker node that goes takes only copies with it. The
driver holds each reference until the shard's stats come back: a task lost with its actor or its node is
submitted again, with the same reference, to an actor that is alive. The driver and the object store hold
at most `SHARDS_PER_WORKER` shards per actor, however large the input; the input is read once, in order.

Each actor calls `stage.setup()` once (again after Ray restarts it, on another node if its own is gone:
`max_restarts=-1`), then processes whole shards with `run_shard` and writes them itself (the output folder
must be on a filesystem every node sees); only the small per-shard stats travel back to the driver's progress view. An
actor gets shards only once it has answered a ping, so one that cannot be placed, or is being restarted,
holds none back. When an actor dies, the shard it was running (the oldest of those it held: an actor runs its
tasks in order) is charged one retry and the others go back uncharged; a shard charged more than
`SHARD_RETRIES` times (one that kills its worker) is given up, the other shards go on, and the stage fails at
the end. A shard done twice (its first task's fate unknown) overwrites the same files atomically: the output
holds it once. A stage that raises fails the run once the shards in flight are done. A killed driver is
resumed by rerunning.

Why not Ray Data over the pending shard indices: every actor would have to rebuild shard i from i alone, but
stages make their shards in many ways (generated seeds, Hub datasets, folders of files, regrouped rows), so in
general only the driver's pending iterator knows a shard's rows; a plan of byte offsets would serve JSONL
inputs only, skipping to shard i on every read is quadratic, and a dataset of whole shards built up front
holds the whole input. Nor a queue drained by one long-lived read task: the shards that task had taken would
be lost with it.
"""

from __future__ import annotations

import copy
import logging
import re
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import ray

from scalequest import progress
from scalequest.config import ConfigError
from scalequest.stage import RowStage, Shard, run_shard

log = logging.getLogger(__name__)

SHARDS_PER_WORKER = 2  # submitted to one actor at once: one running, one waiting, so no actor idles on the driver
SHARD_RETRIES = 3  # a shard whose worker died this many more times while running it is given up (the stage fails)
CONNECT_TIMEOUT_S = 5.0
PING_INTERVAL_S = 1.0  # how often an actor that Ray is restarting is asked whether it is back
WAIT_S = 1.0  # the driver's longest wait for a result, so that restarting actors are pinged on time
STALL_WARNING_S = 600.0  # no actor ready this long while shards wait: say so (Ray may lack room to restart them)
TEARDOWN_TIMEOUT_S = 60.0


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
    cpus = workers * executor.num_cpus_per_worker
    if cpus > cluster_cpus:  # the actors that do not fit would never start
        raise ConfigError(
            f"executor asks for {cpus:g} CPUs ({workers} workers x {executor.num_cpus_per_worker:g}) but the Ray "
            f"cluster has {cluster_cpus:g}; lower executor.num_workers or executor.num_cpus_per_worker"
        )
    return workers, gpus


def worker_resources(stage: RowStage, gpus: float) -> tuple[RowStage, dict, list[dict] | None]:
    """The stage the actors get, their GPU options, and the placement-group bundles of tensor-parallel vLLM."""
    engine = getattr(stage.config, "engine", None)
    if gpus <= 1 or engine is None or engine.engine != "vllm":
        return stage, {"num_gpus": gpus}, None
    # As in vLLM's and Ray's own examples: the actor takes no GPU itself but runs in a placement group of
    # one-GPU bundles on one node, and vLLM's Ray backend puts its workers there.
    cpus = stage.config.executor.num_cpus_per_worker
    # The actors' copy only: the driver's config (hashed, saved in the manifest) stays as the user wrote it.
    stage = copy.copy(stage)
    kwargs = {"distributed_executor_backend": "ray", **engine.engine_kwargs}
    stage.config = stage.config.model_copy(update={"engine": engine.model_copy(update={"engine_kwargs": kwargs})})
    return stage, {"num_gpus": 0}, [{"GPU": 1, "CPU": cpus}] * int(gpus)


class ShardWorker:
    """A Ray actor: sets the stage up once, then processes and writes one shard per `run` call."""

    def __init__(self, stage: RowStage, out: str):
        self.stage, self.out = stage, Path(out)
        progress.hide_inner_bars()  # the driver's view counts this worker's shards
        stage.setup()

    def ping(self) -> bool:
        return True

    def run(self, shard: Shard) -> dict:
        return run_shard(self.stage, shard, self.out)

    def teardown(self) -> None:
        self.stage.teardown()


@dataclass
class Worker:
    """The driver's view of one actor: whether it may take shards, and the shards it holds, oldest first."""

    actor: ray.actor.ActorHandle
    ready: bool = False  # answered a ping since it was (re)started
    dead: bool = False  # dead for good (killed from outside): Ray will not restart it
    ping: ray.ObjectRef | None = None
    ping_at: float = 0.0  # when to ask a restarting actor again
    tasks: dict[int, ray.ObjectRef] = field(default_factory=dict)  # shard index -> its result, in submit order


class Pool:
    """The driver's bookkeeping: every shard it took from `pending` is in flight, waiting for a retry, or done."""

    def __init__(self, stage: RowStage, pending: Iterator[Shard], workers: list[Worker]):
        self.stage, self.pending, self.workers = stage, pending, workers
        self.refs: dict[int, ray.ObjectRef] = {}  # fed and not finished: the window the object store holds
        self.retry: deque[int] = deque()  # fed shards whose task was lost, to submit again
        self.charged: Counter = Counter()  # shard -> times its worker died while running it
        self.given_up: dict[int, str] = {}  # shard -> why, for shards charged more than SHARD_RETRIES times
        self.fed: set[int] = set()
        self.finished: set[int] = set()
        self.owner: dict[ray.ObjectRef, tuple[Worker, int | None]] = {}  # result or ping -> (actor, shard or None)
        self.exhausted = False  # nothing more to take from `pending`
        self.error: BaseException | None = None  # the run failed: submit nothing more, let the rest finish

    def next_shard(self) -> int | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted or self.error is not None:
            return None
        try:
            shard = next(self.pending, None)
        except Exception as err:  # a bad input row: the shards in flight still finish
            self.error, self.exhausted = err, True
            return None
        if shard is None:
            self.exhausted = True
            return None
        self.refs[shard.index] = ray.put(shard)
        self.fed.add(shard.index)
        return shard.index

    def submit(self) -> None:
        """Give waiting shards to the ready actors holding the fewest."""
        while self.error is None:
            free = [w for w in self.workers if w.ready and len(w.tasks) < SHARDS_PER_WORKER]
            if not free:
                return
            index = self.next_shard()
            if index is None:
                return
            worker = min(free, key=lambda w: len(w.tasks))
            result = worker.actor.run.remote(self.refs[index])
            worker.tasks[index] = result
            self.owner[result] = (worker, index)

    def ping(self, worker: Worker) -> None:
        worker.ping = worker.actor.ping.remote()
        self.owner[worker.ping] = (worker, None)

    def in_flight(self) -> bool:
        return any(worker.tasks for worker in self.workers)

    def done(self) -> bool:
        if self.in_flight():
            return False
        return self.error is not None or (self.exhausted and not self.retry)

    def fail(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err

    def finish(self, worker: Worker, index: int, stats: dict) -> dict | None:
        del worker.tasks[index]
        if index in self.finished:
            return None
        self.finished.add(index)
        self.refs.pop(index, None)  # frees the shard in the object store
        if stats["rows_in"] and stats["failed"] == stats["rows_in"]:
            # Nothing got through (a server down?): take no more shards, leave the rest pending; the runner says so.
            self.exhausted = True
        return stats

    def lost(self, worker: Worker, err: BaseException) -> list[dict]:
        """`worker`'s actor died: keep what it finished, charge the shard it was running, requeue the rest."""
        worker.ready = False
        finished, requeued = [], []
        for index, result in list(worker.tasks.items()):
            self.owner.pop(result, None)
            ready, _ = ray.wait([result], timeout=0)
            if ready:
                try:
                    value = ray.get(result)
                except ray.exceptions.RayError:
                    pass
                else:
                    finished.extend(filter(None, [self.finish(worker, index, value)]))
                    continue
            del worker.tasks[index]
            requeued.append(index)
        if requeued:
            running = requeued[0]
            self.charged[running] += 1
            if self.charged[running] > SHARD_RETRIES:  # it likely kills its worker: the other shards go on
                self.given_up[running] = cause(err)
                self.refs.pop(running, None)
                requeued.pop(0)
            log.warning(
                "%s: a Ray worker died (%s) running shard %d; %s",
                self.stage.config.stage,
                cause(err),
                running,
                f"shards {requeued} go to another" if requeued else "it holds no other shard",
            )
            self.retry.extendleft(reversed(requeued))
        self.ping(worker)
        return finished

    def collect(self, result: ray.ObjectRef) -> list[dict]:
        """Handle one result or ping that is ready; the stats of the shards that finished with it."""
        if result not in self.owner:
            return []
        worker, index = self.owner.pop(result)
        try:
            value = ray.get(result)
        except ray.exceptions.RayActorError as err:
            if err.actor_init_failed:  # the stage's setup raised: every restart would too
                self.fail(err)
                if index is not None:
                    del worker.tasks[index]
                return []
            if index is None and isinstance(err, ray.exceptions.ActorDiedError):  # not restarting: killed
                worker.ping, worker.dead = None, True
                if all(other.dead for other in self.workers):
                    self.fail(err)
                return []
            if index is None:  # still restarting: ask again later
                worker.ping, worker.ping_at = None, time.monotonic() + PING_INTERVAL_S
                return []
            return self.lost(worker, err)
        except ray.exceptions.RayError as err:  # the stage raised, or its shard could not be fetched
            self.fail(err)
            if index is not None:
                del worker.tasks[index]
            return []
        if index is None:
            worker.ping, worker.ready = None, True
            return []
        stats = self.finish(worker, index, value)
        return [stats] if stats else []

    def wait(self) -> list[dict]:
        """Wait up to WAIT_S for results; ping the restarting actors that are due; the finished shards' stats."""
        now = time.monotonic()
        for worker in self.workers:
            if not worker.ready and not worker.dead and worker.ping is None and worker.ping_at <= now:
                self.ping(worker)
        if not self.owner:  # every actor is restarting: sleep until the next ping is due
            due = min((w.ping_at for w in self.workers if not w.ready and not w.dead), default=now + WAIT_S)
            time.sleep(min(WAIT_S, max(0.0, due - now)) + 0.01)
            return []
        ready, _ = ray.wait(list(self.owner), num_returns=1, timeout=WAIT_S)
        if ready:  # take all that are ready, oldest first
            ready, _ = ray.wait(list(self.owner), num_returns=len(self.owner), timeout=0)
        return [stats for result in ready for stats in self.collect(result)]


def cause(err: BaseException) -> str:
    """The worker's own exception line from a Ray error, whose text holds the tracebacks of every layer."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line) and not line.startswith("ray.")]
    return raised[-1] if raised else lines[0] if lines else type(err).__name__


def start_workers(stage: RowStage, out: Path, workers: int, gpus: float) -> tuple[list[Worker], list]:
    """The actors (and the placement groups of tensor-parallel ones), each pinged: it gets shards once it answers."""
    worker_stage, gpu_options, bundles = worker_resources(stage, gpus)
    options = dict(
        num_cpus=stage.config.executor.num_cpus_per_worker,
        max_restarts=-1,  # Ray restarts a dead actor, on another node if its own is gone
        max_task_retries=0,  # the driver resubmits lost shards itself, to whichever actor is alive
        **gpu_options,
    )
    remote, pool, groups = ray.remote(ShardWorker), [], []
    for _ in range(workers):
        extra = {}
        if bundles:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = ray.util.placement_group(bundles, strategy="STRICT_PACK")
            groups.append(group)
            extra["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group, placement_group_capture_child_tasks=True
            )
        pool.append(Worker(remote.options(**options, **extra).remote(worker_stage, str(out))))
    return pool, groups


def stop_workers(pool: Pool, groups: list, clean: bool) -> None:
    """Tear the ready actors' stages down (when the run ended cleanly), then end every actor and group."""
    calls = [worker.actor.teardown.remote() for worker in pool.workers if clean and worker.ready]
    if calls:
        ray.wait(calls, num_returns=len(calls), timeout=TEARDOWN_TIMEOUT_S)
    for worker in pool.workers:
        ray.kill(worker.actor, no_restart=True)
    for group in groups:
        ray.util.remove_placement_group(group)


def run_ray(
    stage: RowStage, shards: Iterable[Shard], out: Path, total_rows: int, done_rows: int = 0, done_removed: int = 0
) -> None:
    """`done_rows` and `done_removed`: what earlier runs finished (a resume), where the progress view starts."""
    config = stage.config
    shards = iter(shards)
    first = next(shards, None)
    if first is None:  # nothing left to do: no cluster needed
        return
    workers, gpus = check_cluster(stage)
    actors, groups = start_workers(stage, out, workers, gpus)
    pool = Pool(stage, chain([first], shards), actors)
    for worker in actors:
        pool.ping(worker)
    view = progress.StageView(config.stage, total_rows, done_rows, done_removed, enabled=config.progress)
    clean, alive_at, warned = False, time.monotonic(), False
    try:
        with view:
            while not pool.done():
                pool.submit()
                for stats in pool.wait():
                    view.shard_done(stats)
                if any(worker.ready for worker in actors):
                    alive_at = time.monotonic()
                elif not warned and time.monotonic() - alive_at > STALL_WARNING_S:
                    log.warning(
                        "%s: no Ray worker ready for %.0f s (all starting or restarting: is there a node with room for "
                        "one?); waiting",
                        config.stage,
                        STALL_WARNING_S,
                    )
                    warned = True
        clean = True
    finally:
        stop_workers(pool, groups, clean)
    if isinstance(pool.error, ray.exceptions.RayError):
        raise RuntimeError(
            f"{config.stage}: a Ray worker failed: {cause(pool.error)}; finished shards are kept, rerun to resume"
        ) from pool.error
    if pool.error is not None:
        raise pool.error
    if pool.given_up:
        (index, why), others = next(iter(pool.given_up.items())), sorted(pool.given_up)[1:11]
        raise RuntimeError(
            f"{config.stage}: a Ray worker failed: shard {index} was running on a worker that died "
            f"{pool.charged[index]} times ({why}){f', and so did shards {others}' if others else ''}; finished "
            "shards are kept, rerun to resume"
        )
    if pool.fed - pool.finished:  # never let the runner write a manifest over a silently partial output
        raise RuntimeError(
            f"{config.stage}: shards {sorted(pool.fed - pool.finished)[:10]} came back from no Ray worker; rerun to "
            "finish them"
        )
