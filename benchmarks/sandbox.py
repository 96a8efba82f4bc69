"""Sandbox throughput: programs per second through scalequest.code, with 1 worker and with N side by side.

Two workloads, each run with workers=1 and then workers=N in the same process:

- trivial: `--programs` copies of a one-line program (the cost of the sandbox itself: namespaces, mounts,
  limits, interpreter start-up);
- humaneval: the 164 canonical HumanEval solutions checked on their tests (scalequest.code.benchmarks), the
  work `evaluate` and `generate-responses` give the sandbox.

Printed per workload: seconds and programs/s for each worker count, and the speed-up ratio N / 1. Run from the
repository root:

    python benchmarks/sandbox.py --workers 2
"""

from __future__ import annotations

import argparse
import os
import time


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N, the parallel worker count")
    parser.add_argument("--programs", type=int, default=64, help="trivial programs per run")
    parser.add_argument("--limit", type=int, default=None, help="HumanEval problems (default: all 164)")
    args = parser.parse_args()

    from scalequest.code import check_available, execute_many
    from scalequest.code.benchmarks import check_completions, load_code_benchmark

    check_available()
    rows = load_code_benchmark("humaneval", limit=args.limit)
    solutions = [row["canonical_solution"] for row in rows]
    workloads = {
        "trivial": (args.programs, lambda w: execute_many(["print(1)"] * args.programs, workers=w)),
        "humaneval": (len(rows), lambda w: check_completions(rows, solutions, workers=w)),
    }
    print("| workload | programs | workers | seconds | programs/s |\n|---|---:|---:|---:|---:|")
    ratios = {}
    for name, (count, run) in workloads.items():
        rates = {}
        for workers in (1, args.workers):
            seconds, results = timed(lambda: run(workers))
            if name == "humaneval":
                failing = [row["id"] for row, status in zip(rows, results) if status != "passed"]
                assert not failing, f"canonical solutions failed: {failing}"
            rates[workers] = count / seconds
            print(f"| {name} | {count} | {workers} | {seconds:.2f} | {rates[workers]:.1f} |")
        ratios[name] = rates[args.workers] / rates[1]
    for name, ratio in ratios.items():
        print(f"ratio {name} {args.workers} workers / 1 worker: {ratio:.2f}x")


if __name__ == "__main__":
    main()
