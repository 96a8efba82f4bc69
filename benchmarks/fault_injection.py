"""Fault injection: what failing requests and kill -9 cost a stage, and that they lose and duplicate nothing.

generate-responses over engine=openai runs twice, one after the other, each against its own `scalequest serve`
(serve.make_server, in this process) over an instant engine whose text is a hash of (prompt, seed, sample):

- clean: a server that never fails, one run;
- faulty: a server failing --fail-rate of the requests (HTTP 500, 429 with retry-after, stalls past the
  client's timeout, connections dropped unanswered; serve.Faults, seeded per request attempt), the driver
  killed with SIGKILL after a random number of requests in each of the first --kills runs, then rerun until it
  exits 0 (exit 3: rows failed after the client's retries; a rerun retries them).

Printed: requests, injected failures by kind, client retries, rows lost, duplicated and changed (all three 0
when resume is right) and the wall time of the faulty run, kills and reruns included, against the clean one.
Run from the repository root:

    python benchmarks/fault_injection.py --rows 1000 --fail-rate 0.2 --kills 3
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from scalequest import io
from scalequest.serve import HashEngine, FAULT_KINDS, Faults, Server, make_server

MODEL = "hash-solver"


def serving(faults: Faults | None) -> Server:
    server = make_server(HashEngine(), MODEL, faults=faults)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def start(args, questions: Path, out: Path, server: Server, log: Path, timeout: float, retries: int):
    command = [
        sys.executable,
        "-m",
        "scalequest.cli",
        "generate-responses",
        f"input={questions}",
        f"output={out}",
        f"shard_size={args.shard_size}",
        f"sampling.n={args.samples}",
        "engine.engine=openai",
        f"engine.model={MODEL}",
        f"engine.base_url=http://127.0.0.1:{server.server_address[1]}/v1",
        "engine.api_key_env=SCALEQUEST_BENCHMARK_KEY",
        f"engine.max_concurrency={args.concurrency}",
        f"engine.max_retries={retries}",
        f"engine.request_timeout={timeout}",
        "progress=false",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("SCALEQUEST_BENCHMARK_KEY", None)
    with open(log, "ab") as handle:
        return subprocess.Popen(command, cwd=out.parent, env=env, stdout=handle, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, server: Server, kill_at: int | None) -> int:
    """The exit status of `proc`, killed with SIGKILL once `server` has seen `kill_at` requests."""
    while proc.poll() is None:
        if kill_at is not None and server.stats["requests"] >= kill_at:
            proc.send_signal(signal.SIGKILL)
            return proc.wait()
        time.sleep(0.002)
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="questions in the input")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2, help="responses per question (sampling.n)")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="share of requests the faulty server fails")
    parser.add_argument("--kills", type=int, default=3, help="runs killed with SIGKILL before the reruns")
    parser.add_argument("--timeout", type=float, default=0.5, help="the client's request_timeout, seconds")
    parser.add_argument("--retries", type=int, default=2, help="the client's max_retries")
    parser.add_argument("--concurrency", type=int, default=16, help="the client's max_concurrency")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault schedule and the kill moments")
    parser.add_argument("--max-runs", type=int, default=30, help="give up after this many faulty runs")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the outputs and logs here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        questions, clean_out, out = work / "questions.jsonl", work / "clean", work / "faulty"
        rows = [{"id": f"q{i:06d}", "question": f"Question {i}: what is {i} + {i * 7 % 13}?"} for i in range(args.rows)]
        questions.write_text(io.to_jsonl(rows))
        faults = Faults(rate=args.fail_rate, seed=args.seed, stall=args.timeout + 0.5, retry_after=0.05)
        clean_server, server = serving(None), serving(faults)
        print(
            f"{args.rows} questions x {args.samples} responses, shards of {args.shard_size}; client: timeout "
            f"{args.timeout:g}s, max_retries {args.retries}, concurrency {args.concurrency}; {os.cpu_count()} CPUs"
        )

        began = time.perf_counter()
        # A patient client for the clean run, so that a busy machine cannot fail its requests.
        code = wait(start(args, questions, clean_out, clean_server, work / "clean.log", 30.0, 5), clean_server, None)
        clean_seconds = time.perf_counter() - began
        if code != 0:
            sys.exit(f"the clean run failed (exit {code}); see {work / 'clean.log'}")

        rng = random.Random(args.seed)
        log = work / "faulty.log"
        runs: list[tuple[int, float]] = []
        began = time.perf_counter()
        while not runs or runs[-1][0] != 0:
            if len(runs) == args.max_runs:
                sys.exit(f"not finished after {len(runs)} runs; see {log}")
            kill_at = (
                server.stats["requests"] + rng.randint(1, max(1, args.rows // 3)) if len(runs) < args.kills else None
            )
            started = time.perf_counter()
            code = wait(start(args, questions, out, server, log, args.timeout, args.retries), server, kill_at)
            runs.append((code, time.perf_counter() - started))
        faulty_seconds = time.perf_counter() - began
        stats, clean_stats = server.stats, clean_server.stats
        for each in (clean_server, server):
            each.shutdown()
            each.server_close()

        expected = {row["id"]: row for row in io.load_rows(clean_out)}
        got = io.load_rows(out)
        ids = Counter(row["id"] for row in got)
        lost = len(expected.keys() - ids.keys())
        duplicates = sum(count - 1 for count in ids.values())
        changed = sum(1 for row in got if row["id"] in expected and row != expected[row["id"]])
        removed = list(io.read_removed(out))
        same_removed = removed == list(io.read_removed(clean_out))
        failed_rows = [int(n) for n in re.findall(r"(\d+) of \d+ rows failed", log.read_text())]

        names = {0: "finished", 3: "rows failed", -signal.SIGKILL: "killed"}
        print(f"runs: {', '.join(f'{names.get(code, code)} {seconds:.1f}s' for code, seconds in runs)}")
        print(f"rows failed after retries, per exit-3 run: {failed_rows or 'none'}")
        print(f"requests: clean {clean_stats['requests']}, faulty {stats['requests']}")
        share = stats["faults_total"] / max(stats["requests"], 1)
        kinds = ", ".join(f"{kind} {stats['faults'][kind]}" for kind in FAULT_KINDS)
        print(f"injected failures: {stats['faults_total']} ({share:.1%} of requests): {kinds}")
        print(
            f"client retries: {stats['retries']} (clean: {clean_stats['retries']}); requests repeated by retries "
            f"and reruns: {stats['repeats']}"
        )
        print(
            f"rows: expected {len(expected)}, got {len(got)}; lost {lost}, duplicates {duplicates}, changed {changed}; "
            f"removed rows {'identical' if same_removed else 'DIFFER'} ({len(removed)})"
        )
        kills = sum(code == -signal.SIGKILL for code, _ in runs)
        overhead = f"{faulty_seconds - clean_seconds:+.1f}s ({faulty_seconds / clean_seconds:.2f}x)"
        print(
            f"wall time: clean {clean_seconds:.1f}s, faulty {faulty_seconds:.1f}s ({kills} kills, "
            f"{len(runs) - 1} reruns): overhead {overhead}"
        )
        if lost or duplicates or changed or not same_removed or len(got) != len(expected):
            sys.exit("resume is broken: the faulty run's rows differ from the clean run's")


if __name__ == "__main__":
    main()
