"""Fault injection: generate-responses over engine=openai against `scalequest serve` failing ~20 % of requests
(HTTP 500, 429 with retry-after, stalls past the client's timeout, connections dropped unanswered), the driver
killed with SIGKILL at random moments and rerun until it finishes (exit 3, rows failed after retries: rerun).
Every question ends up exactly once, and the rows equal those of a run against a server that never fails.

The served engine is a hash of (prompt, seed, sample), so the two servers answer alike; the failure schedule is
fixed by a seed per request attempt (see serve.Faults), the kill moments by a seeded random generator.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from scalequest import io
from scalequest.cli import EXIT_UNFINISHED
from scalequest.serve import HashEngine, Faults, Server, make_server

ROWS, SHARD_SIZE, SAMPLES = 1000, 100, 2
FAIL_RATE, FAULT_SEED, KILL_SEED = 0.2, 7, 11
TIMEOUT, RETRIES = 0.5, 1  # the client's; one retry leaves ~4 % of rows failed per run, so reruns get exit 3
# The first KILLS - 1 runs are killed after a random number of requests in KILL_AFTER, from its start; the
# first rerun that retries failed rows (after an exit 3) is killed too, after 1 to 3 requests (of about 20).
KILLS = 3
KILL_AFTER = (20, 300)
MAX_RUNS = KILLS + 10
RUN_TIMEOUT = 120.0
MODEL = "hash-solver"

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


@contextmanager
def serving(faults: Faults | None = None) -> Iterator[Server]:
    server = make_server(HashEngine(), MODEL, faults=faults)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def start(
    config: Path, out: Path, server: Server, log: Path, timeout: float = TIMEOUT, retries: int = RETRIES
) -> subprocess.Popen:
    """A run of the stage against `server`, as a user runs it: a config file and overrides (timeout and retries
    are operational fields, out of the config hash)."""
    port = server.server_address[1]
    command = [sys.executable, "-m", "scalequest.cli", "generate-responses", "-c", str(config), f"output={out}"]
    command += [f"engine.base_url=http://127.0.0.1:{port}/v1", f"engine.max_retries={retries}"]
    command += [f"engine.request_timeout={timeout}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("SCALEQUEST_FAULT_TEST_KEY", None)
    with open(log, "ab") as handle:
        return subprocess.Popen(command, cwd=out.parent, env=env, stdout=handle, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: Path, kill_at_requests: int | None = None, server: Server | None = None) -> int:
    """The exit status of `proc`, killed with SIGKILL once the server has seen `kill_at_requests` requests."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"a run took over {RUN_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}")
        if kill_at_requests is not None and server.stats["requests"] >= kill_at_requests:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.002)
    return proc.returncode


def kill_point(codes: list[int], rng: random.Random) -> int | None:
    """After how many more requests the next run is to be killed, if at all (see KILLS)."""
    kills = codes.count(-signal.SIGKILL)
    if kills < KILLS - 1:
        return rng.randint(*KILL_AFTER)
    if kills == KILLS - 1 and codes[-1] == EXIT_UNFINISHED:
        return rng.randint(1, 3)
    return None


def write_config(folder: Path) -> Path:
    """The questions, and a generate-responses config reading them over engine=openai."""
    rows = [{"id": f"q{i:05d}", "question": f"Question {i}: what is {i} + {i * 7 % 13}?"} for i in range(ROWS)]
    (folder / "questions.jsonl").write_text(io.to_jsonl(rows))
    engine = {"engine": "openai", "model": MODEL, "api_key_env": "SCALEQUEST_FAULT_TEST_KEY", "max_concurrency": 16}
    config = {"input": str(folder / "questions.jsonl"), "shard_size": SHARD_SIZE, "sampling": {"n": SAMPLES}}
    path = folder / "generate-responses.yaml"
    path.write_text(yaml.safe_dump({**config, "engine": engine, "progress": False}))
    return path


def test_faults_and_sigkills_then_reruns_give_the_rows_of_a_clean_run(tmp_path):
    config = write_config(tmp_path)
    clean_out, out, log = tmp_path / "clean", tmp_path / "faulty", tmp_path / "runs.log"
    faults = Faults(rate=FAIL_RATE, seed=FAULT_SEED, stall=TIMEOUT + 0.5, retry_after=0.05)
    rng = random.Random(KILL_SEED)
    with serving() as clean_server, serving(faults) as server:
        # The clean run, alongside: a patient client, so that a busy machine cannot fail its requests.
        clean = start(config, clean_out, clean_server, tmp_path / "clean.log", timeout=30.0, retries=5)
        codes = []
        while not codes or codes[-1] != 0:
            assert len(codes) < MAX_RUNS, f"not finished after {len(codes)} runs: {codes}\n{log.read_text()[-3000:]}"
            kill_after = kill_point(codes, rng)
            kill_at = None if kill_after is None else server.stats["requests"] + kill_after
            codes.append(wait(start(config, out, server, log), log, kill_at, server))
            assert codes[-1] in (0, EXIT_UNFINISHED, -signal.SIGKILL), log.read_text()[-3000:]
            if codes[-1] != 0:
                assert not (out / io.MANIFEST).exists(), "an unfinished run must not look finished"
        assert wait(clean, tmp_path / "clean.log") == 0, (tmp_path / "clean.log").read_text()[-3000:]
        stats, clean_stats = server.stats, clean_server.stats

    # Killed twice, then a run left rows failed (exit 3), the rerun retrying them was killed, and more reruns
    # finished the stage.
    assert codes[: KILLS - 1] == [-signal.SIGKILL] * (KILLS - 1), codes
    assert EXIT_UNFINISHED in codes and codes.count(-signal.SIGKILL) == KILLS, codes
    assert codes[codes.index(EXIT_UNFINISHED) + 1] == -signal.SIGKILL, codes
    assert "rerun to retry them" in log.read_text()
    # The failures hit about a fifth of the requests, of every kind, and the client retried them.
    assert 0.15 < stats["faults_total"] / stats["requests"] < 0.25, stats
    assert all(count > 0 for count in stats["faults"].values()), stats
    assert stats["retries"] > 0 and stats["answered"] >= ROWS
    assert clean_stats["faults_total"] == 0 and clean_stats["requests"] == clean_stats["answered"] == ROWS

    expected, rows = io.load_rows(clean_out), io.load_rows(out)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicated rows"
    assert rows == expected, "rows differ from the clean run"
    removed, expected_removed = list(io.read_removed(out)), list(io.read_removed(clean_out))
    assert removed == expected_removed
    # Every question exactly once: its SAMPLES responses are all either kept or removed, none twice.
    per_question = Counter(row["question_id"] for row in rows)
    per_question.update(entry["id"] for entry in removed)
    assert per_question == {f"q{i:05d}": SAMPLES for i in range(ROWS)}
    assert 0 < len(removed) < len(rows)

    manifest = json.loads((out / io.MANIFEST).read_text())
    clean_manifest = json.loads((clean_out / io.MANIFEST).read_text())
    assert manifest["rows_in"] == ROWS and manifest["shards"] == ROWS // SHARD_SIZE
    for key in ("rows_in", "rows_out", "dropped", "counts", "tokens_in", "tokens_out"):
        assert manifest[key] == clean_manifest[key], key
    assert not (out / io.PARTIAL_DIR).is_dir() or not any((out / io.PARTIAL_DIR).iterdir())
    assert not list(out.rglob("*.tmp-*")), "temporary files left behind"


def test_fault_schedule_is_seeded_per_attempt_and_hits_the_rate():
    faults = Faults(rate=0.2, seed=3)
    draws = [faults.draw(b"request %d" % (i // 4), i % 4) for i in range(20000)]
    assert draws == [faults.draw(b"request %d" % (i // 4), i % 4) for i in range(20000)]
    kinds = Counter(draws)
    assert 0.18 < 1 - kinds.pop(None) / len(draws) < 0.22
    assert set(kinds) == {"500", "429", "timeout", "drop"} and min(kinds.values()) > 0.04 * len(draws)
    assert draws != [Faults(rate=0.2, seed=4).draw(b"request %d" % (i // 4), i % 4) for i in range(20000)]
    assert {Faults(rate=0.0).draw(b"x", i) for i in range(100)} == {None}
    with pytest.raises(ValueError):
        Faults(rate=0.2, kinds=("503",))


def test_each_fault_kind_over_http_and_the_stats_endpoint():
    def post(port: int, timeout: float = 10.0) -> int:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "1+1?"}], "seed": 1}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                assert "\\boxed{" in json.load(response)["choices"][0]["message"]["content"]
                return response.status
        except urllib.error.HTTPError as err:
            assert json.load(err)["error"]["message"].startswith("injected fault")
            if err.code == 429:
                waits.append((err.headers["retry-after-ms"], err.headers["retry-after"]))
            return err.code

    waits: list[tuple[str, str]] = []

    with serving(Faults(rate=1.0, kinds=("500",))) as server:
        assert post(server.server_address[1]) == 500
    with serving(Faults(rate=1.0, kinds=("429",), retry_after=0.05)) as server:
        assert post(server.server_address[1]) == 429 and waits == [("50", "0.05")]
    with serving(Faults(rate=1.0, kinds=("drop",))) as server:
        with pytest.raises((http.client.RemoteDisconnected, urllib.error.URLError, ConnectionError)):
            post(server.server_address[1])
    with serving(Faults(rate=1.0, kinds=("timeout",), stall=3.0)) as server:
        began = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            post(server.server_address[1], timeout=0.2)
        assert time.monotonic() - began < 2.0  # the client gave up; the server was still stalling
    # Counting: no stalls here, and a patient client, so that a slow machine cannot turn an answer into a timeout.
    with serving(Faults(rate=0.5, seed=1, kinds=("500", "429", "drop"))) as server:
        port = server.server_address[1]
        codes = []
        for _ in range(40):
            try:
                codes.append(post(port, timeout=60.0))  # a busy 2-core CI machine took over 10 s once
            except (OSError, http.client.HTTPException):
                codes.append(None)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
            stats = json.load(response)
    assert stats == server.stats
    assert stats["requests"] == 40 and stats["repeats"] == 39 and stats["answered"] == codes.count(200)
    assert stats["faults_total"] == 40 - codes.count(200) and 10 < stats["faults_total"] < 30
    assert stats["faults"]["500"] == codes.count(500) and stats["faults"]["429"] == codes.count(429)
