"""Peak memory of the filter-language stage as its input grows (10K, 100K, 1M synthetic questions).

Every run is a fresh process, so its peak resident set (ru_maxrss) is that run's alone. Runs go with
deduplicate on and off (near-deduplication off), and with --dedup near also with near-deduplication on
(its defaults): exact global deduplication keeps an 8-byte hash of every distinct question while it looks
for repeats (by design), near-deduplication its LSH band keys, so both grow with the input; everything
else streams (the runner counts and fingerprints the input, then feeds shards one at a time). With
--executor ray the driver is measured (Ray's own processes are not). Run from the repository root:

    python benchmarks/filter_memory.py --sizes 10000 100000 1000000
    python benchmarks/filter_memory.py --sizes 10000 100000 1000000 --executor ray --dedup off
    python benchmarks/filter_memory.py --sizes 100000 --dedup near
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS_PER_FILE = 10_000
TEMPLATES = [
    "A shop sells {a} apples at {b} dollars each. How much do {c} apples cost?",
    "Tom reads {a} pages a day for {b} days, then {c} more pages. How many pages did he read?",
    "A train travels {a} miles in {b} hours. How far does it go in {c} hours at the same speed?",
    "Find x if {a}x + {b} = {c}.",
    "What is the remainder when {a}{b} is divided by {c}?",
]


def write_input(folder: Path, rows: int, seed: int = 0) -> None:
    """Synthetic questions, written file by file: 3% repeat an earlier one of their file, 1% are not ASCII."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for start in range(0, rows, ROWS_PER_FILE):
        texts = []
        for number in range(start, min(start + ROWS_PER_FILE, rows)):
            if texts and rng.random() < 0.03:
                text = rng.choice(texts)  # an exact repeat (whitespace and case changed: still a repeat)
                text = "  " + text.upper() if rng.random() < 0.5 else text
            else:
                text = rng.choice(TEMPLATES).format(a=number, b=rng.randint(2, 99), c=rng.randint(2, 999))
                if rng.random() < 0.01:
                    text += " Réponse ?"
            texts.append(text)
        lines = (json.dumps({"id": f"r{start + i:08d}", "question": text}) + "\n" for i, text in enumerate(texts))
        (folder / f"part-{start // ROWS_PER_FILE:05d}.jsonl").write_text("".join(lines))


def child(source: Path, output: Path, dedup: str, executor: str, shard_size: int) -> None:
    from scalequest.runner import run_row_stage
    from scalequest.stages.filter_language import FilterLanguage, FilterLanguageConfig

    # Import the executor first, so the growth below is the run's own, not Ray's or tqdm's code.
    __import__(f"scalequest.executors.{executor}")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    near = FilterLanguageConfig.model_fields["near_dedup_threshold"].default if dedup == "near" else None
    config = FilterLanguageConfig(
        input=source, output=output, shard_size=shard_size, deduplicate=dedup != "off", progress=False,
        near_dedup_threshold=near,
        executor={"kind": executor, "num_workers": 1} if executor == "ray" else "local",
    )  # fmt: skip
    started = time.perf_counter()
    manifest = run_row_stage(FilterLanguage, config)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Pages of Ray's object store (shared memory) that this driver wrote count in its RSS too.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    shared = int(status.get("RssShmem", "0 kB").split()[0])
    figures = {"baseline_mb": baseline / 1024, "peak_mb": peak / 1024, "shm_mb": shared / 1024, "seconds": seconds}
    print(json.dumps({**figures, "rows_out": manifest["rows_out"], "dropped": manifest["dropped"]}))


def measure(source: Path, work: Path, dedup: str, executor: str, shard_size: int) -> dict:
    output = work / f"out-{executor}-{dedup}"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, __file__, "--child", str(source), str(output), str(dedup), executor, str(shard_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"run failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(output, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, source, output, dedup, executor, shard_size = sys.argv
        return child(Path(source), Path(output), dedup, executor, int(shard_size))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="input rows per run")
    parser.add_argument(
        "--dedup", choices=["both", "on", "off", "near", "all"], default="both",
        help="settings to run: on (exact only), off, both (on and off), near (exact and near), all",
    )  # fmt: skip
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="executor of the measured runs")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per shard")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    settings = {"both": ["on", "off"], "on": ["on"], "off": ["off"], "near": ["near"], "all": ["on", "near", "off"]}[
        args.dedup
    ]
    work = Path(tempfile.mkdtemp(prefix="filter-memory-", dir=args.workdir))
    print(
        f"filter-language, executor {args.executor}, shards of {args.shard_size} rows; peak RSS of a fresh process "
        "per run"
    )
    print(
        f"{'rows':>9} {'dedup':>6} {'baseline MB':>12} {'peak MB':>8} {'growth MB':>10} {'shm MB':>7} {'seconds':>8} "
        f"{'rows/s':>8}  dropped"
    )
    try:
        for rows in args.sizes:
            source = work / f"input-{rows}"
            write_input(source, rows)
            for dedup in settings:
                r = measure(source, work, dedup, args.executor, args.shard_size)
                print(f"{rows:>9} {dedup:>6} {r['baseline_mb']:>12.1f} {r['peak_mb']:>8.1f} "
                      f"{r['peak_mb'] - r['baseline_mb']:>10.1f} {r['shm_mb']:>7.1f} {r['seconds']:>8.1f} "
                      f"{rows / r['seconds']:>8.0f}  {r['dropped']}",
                      flush=True)  # fmt: skip
            shutil.rmtree(source)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
