"""Answer-grading throughput: one grading process versus the process pool of `grade_many`.

The pairs are the reference solutions of MATH500 (last \\boxed{}) and GSM8K ("#### N" rewritten as
"The answer is N.") against their gold answers, repeated up to --pairs. Run from the repository root:

    python benchmarks/grading_throughput.py --pairs 2000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from scalequest.math import extract_answer, grade_many, load_benchmark
from scalequest.math.benchmarks import default_data_dir


def reference_pairs(data_dir: Path) -> list[tuple[str | None, str]]:
    """(extracted answer, gold) for every MATH500 and GSM8K reference solution."""
    pairs: list[tuple[str | None, str]] = []
    math500 = load_benchmark("math500", data_dir=data_dir)
    math500_raw = [
        json.loads(line) for line in (data_dir / "math500_test.jsonl").read_text().splitlines() if line.strip()
    ]
    pairs += [(extract_answer(raw["solution"]), row["gold"]) for row, raw in zip(math500, math500_raw)]
    gsm8k = load_benchmark("gsm8k", data_dir=data_dir)
    gsm8k_raw = [json.loads(line) for line in (data_dir / "gsm8k_test.jsonl").read_text().splitlines() if line.strip()]
    for row, raw in zip(gsm8k, gsm8k_raw):
        body, final = raw["answer"].rsplit("####", 1)
        pairs.append((extract_answer(f"{body}The answer is {final.strip()}."), row["gold"]))
    return pairs


def timed_grading(pairs: list[tuple[str | None, str]], workers: int, timeout: float) -> tuple[float, int, int]:
    """Answers per second (start-up of the grading processes included), correct count, timeouts."""
    start = time.perf_counter()
    results = grade_many(pairs, workers=workers, timeout=timeout)
    elapsed = time.perf_counter() - start
    return len(pairs) / elapsed, sum(r.correct for r in results), sum(r.timed_out for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="folder with math500_test.jsonl and gsm8k_test.jsonl"
    )
    parser.add_argument("--pairs", type=int, default=2000, help="number of (predicted, gold) pairs to grade")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="grading processes in the pool")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds allowed per comparison")
    args = parser.parse_args()

    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        parser.error("no data folder: pass --data-dir or set SCALEQUEST_DATA_DIR")
    base = reference_pairs(data_dir)
    pairs = (base * (args.pairs // len(base) + 1))[: args.pairs]
    print(f"{len(pairs)} pairs ({len(base)} distinct), timeout {args.timeout}s, {os.cpu_count()} CPUs")

    single_rate, single_correct, single_timeouts = timed_grading(pairs, workers=1, timeout=args.timeout)
    print(f"one grading process : {single_rate:8.1f} answers/s  correct {single_correct}  timed out {single_timeouts}")
    pool_rate, pool_correct, pool_timeouts = timed_grading(pairs, workers=args.workers, timeout=args.timeout)
    print(
        f"pool of {args.workers:<2} processes: {pool_rate:8.1f} answers/s  correct {pool_correct}  timed out "
        f"{pool_timeouts}"
    )
    print(f"speed-up: {pool_rate / single_rate:.2f}x")


if __name__ == "__main__":
    main()
