"""Answer-grading throughput on Ray: one Ray actor versus several, each grading chunks of pairs.

Grading is CPU-bound (Math-Verify under sympy). Each actor grades with `scalequest.math.grade`, which
runs the checks in the actor's own grading process. The pairs are the reference solutions of MATH500
and GSM8K against their gold answers (as in grading_throughput.py), repeated up to --pairs. Times are
taken after every actor has started its grading process; start-up is printed apart. Run from the
repository root (a local Ray with one CPU per core is started unless --address names a cluster):

    python benchmarks/ray_grading.py --pairs 3000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import ray
from ray.util import ActorPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grading_throughput import reference_pairs  # noqa: E402

from scalequest.math.benchmarks import default_data_dir  # noqa: E402


@ray.remote
class Grader:
    def __init__(self, timeout: float):
        from scalequest.math import grade

        self.grade, self.timeout = grade, timeout
        self.grade("1", "1")  # start and warm up this actor's grading process before the clock runs

    def ready(self) -> bool:
        return True

    def grade_chunk(self, chunk: list[tuple[str | None, str]]) -> tuple[int, int]:
        results = [self.grade(predicted, gold, self.timeout) for predicted, gold in chunk]
        return sum(r.correct for r in results), sum(r.timed_out for r in results)


def timed_grading(pairs, workers: int, chunk_size: int, timeout: float, cpus: float) -> tuple[float, float, int, int]:
    """(answers per second, start-up seconds, correct, timed out) with `workers` actors."""
    started = time.perf_counter()
    actors = [Grader.options(num_cpus=cpus).remote(timeout) for _ in range(workers)]
    ray.get([actor.ready.remote() for actor in actors])
    startup = time.perf_counter() - started
    chunks = [pairs[i : i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    started = time.perf_counter()
    results = list(ActorPool(actors).map_unordered(lambda actor, chunk: actor.grade_chunk.remote(chunk), chunks))
    elapsed = time.perf_counter() - started
    for actor in actors:
        ray.kill(actor)
    return len(pairs) / elapsed, startup, sum(r[0] for r in results), sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="folder with math500_test.jsonl and gsm8k_test.jsonl"
    )
    parser.add_argument("--pairs", type=int, default=3000, help="number of (predicted, gold) pairs to grade")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors in the parallel run (compared with 1)")
    parser.add_argument("--chunk", type=int, default=50, help="pairs per actor call")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is printed")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds allowed per comparison")
    parser.add_argument("--address", default=None, help="Ray cluster address; default: start a local Ray")
    args = parser.parse_args()

    data_dir = (
        args.data_dir or default_data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
    )
    if not (data_dir / "math500_test.jsonl").is_file():
        parser.error(f"no benchmark data in {data_dir}: pass --data-dir or set SCALEQUEST_DATA_DIR")
    base = reference_pairs(data_dir)
    pairs = (base * (args.pairs // len(base) + 1))[: args.pairs]

    ray.init(address=args.address, include_dashboard=False, logging_level="WARNING")
    cpus = ray.cluster_resources().get("CPU", 1)
    per_actor = min(1.0, cpus / args.workers)
    print(f"{len(pairs)} pairs ({len(base)} distinct), chunks of {args.chunk}, timeout {args.timeout}s, "
          f"Ray cluster with {cpus:g} CPUs, {per_actor:g} CPU per actor, this machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    rates = {}
    for workers in (1, args.workers):
        runs = [timed_grading(pairs, workers, args.chunk, args.timeout, per_actor) for _ in range(args.repeats)]
        rates[workers] = statistics.median(r[0] for r in runs)
        startup = statistics.median(r[1] for r in runs)
        correct, timeouts = runs[-1][2], runs[-1][3]
        spread = ", ".join(f"{r[0]:.0f}" for r in runs)
        print(f"{workers} Ray actor{'s' if workers > 1 else ' '}: {rates[workers]:8.1f} answers/s (runs: {spread})  "
              f"start-up {startup:.1f}s  correct {correct}  timed out {timeouts}")  # fmt: skip
    print(f"speed-up: {rates[args.workers] / rates[1]:.2f}x with {args.workers} actors")


if __name__ == "__main__":
    main()
