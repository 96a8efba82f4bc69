"""OpenAIEngine against real local HTTP servers: `scalequest serve` over a tiny HFEngine, and a stdlib fake
OpenAI server that can fail, stall and count requests in flight. No internet."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scalequest.config import engine_config
from scalequest.engines import load_engine
from scalequest.engines.base import SamplingParams
from scalequest.engines.openai import OpenAIEngine, split_evenly
from scalequest.serve import make_server, write_json

KEY_ENV = "SCALEQUEST_TEST_KEY"
SECRET = "sk-test-SECRET-0123456789abcdef"
RAW = ["Tom has 3 apples and buys 5 more.", "What is the sum of 12 and 30?"]
CHAT = [
    [{"role": "user", "content": "Find x if 2x + 3 = 11."}],
    [{"role": "user", "content": "How far does the train go?"}],
]


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def start(server: ThreadingHTTPServer) -> threading.Thread:
    # A short poll interval makes shutdown() quick.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def openai_engine(port: int, **overrides) -> OpenAIEngine:
    config = engine_config(
        engine="openai", model="tiny", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, **overrides
    )
    return OpenAIEngine(config)


# --- scalequest serve over a tiny HFEngine -------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    from scalequest.engines.hf import HFEngine

    hf = HFEngine(engine_config(model=str(tiny_model_dir)))
    server = make_server(hf, "tiny", "127.0.0.1", 0)
    start(server)
    yield hf, server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("prompts", [RAW, CHAT], ids=["raw", "chat"])
def test_prompts_return_n_completions_with_token_counts(served, prompts):
    _, port = served
    engine = openai_engine(port)
    results = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=1))
    assert len(results) == len(prompts)
    for completions in results:
        assert len(completions) == 3
        assert all(c.prompt_tokens > 0 and 0 < c.completion_tokens <= 8 for c in completions)
        assert all(c.finish_reason in ("stop", "length") for c in completions)
    assert engine.usage.requests == len(prompts) and engine.usage.failures == 0
    assert engine.usage.prompt_tokens == sum(cs[0].prompt_tokens for cs in results)
    assert engine.usage.completion_tokens == sum(c.completion_tokens for cs in results for c in cs)


@pytest.mark.parametrize("prompt", [RAW[0], CHAT[0]], ids=["raw", "chat"])
def test_greedy_matches_hf_engine(served, prompt):
    hf, port = served
    params = SamplingParams(temperature=0, max_new_tokens=12)
    [[direct]] = hf.generate([prompt], params)
    [[remote]] = openai_engine(port).generate([prompt], params)
    assert remote == direct  # text, prompt_tokens, completion_tokens (per choice, from serve) and finish_reason


def test_concurrent_requests_through_serve_match_serial(served):
    # serve's lock serialises generate(); parallel requests must still each get their own answer.
    _, port = served
    prompts = RAW * 2 + CHAT * 2
    params = SamplingParams(temperature=0, max_new_tokens=6)
    serial = openai_engine(port, max_concurrency=1).generate(prompts, params)
    parallel = openai_engine(port, max_concurrency=8).generate(prompts, params)
    assert parallel == serial


def post(port: int, path: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_serve_endpoints_and_bad_requests(served):
    _, port = served
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as response:
        assert [m["id"] for m in json.load(response)["data"]] == ["tiny"]

    status, body = post(
        port,
        "/v1/completions",
        json.dumps({"model": "tiny", "prompt": RAW, "n": 2, "max_tokens": 4, "stop": "\n"}).encode(),
    )
    assert status == 200 and body["object"] == "text_completion" and body["model"] == "tiny"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(isinstance(c["text"], str) and c["finish_reason"] in ("stop", "length") for c in body["choices"])
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    status, body = post(port, "/v1/chat/completions", json.dumps({"messages": CHAT[0], "max_tokens": 4}).encode())
    assert status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"

    bad = [
        ("/v1/completions", b"{not json"),
        ("/v1/completions", b"[1, 2]"),
        ("/v1/completions", json.dumps({"model": "tiny"}).encode()),
        ("/v1/completions", json.dumps({"prompt": "x", "n": "two"}).encode()),
        ("/v1/completions", json.dumps({"prompt": "x", "stop": [1]}).encode()),
        ("/v1/chat/completions", json.dumps({"prompt": "x"}).encode()),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user"}]}).encode()),
    ]
    for path, data in bad:
        status, body = post(port, path, data)
        assert status == 400, data
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert post(port, "/v1/embeddings", b"{}")[0] == 404


# --- a fake OpenAI server for concurrency, retries and failures -------------------------------------


class FakeOpenAI:
    """Fails the first `fail_first` requests with `status` (+ `headers`, + `fail_message`), then answers with
    completions that echo the prompt. Records every request body and Authorization header, and the most
    requests in flight at once."""

    def __init__(
        self,
        fail_first: int = 0,
        status: int = 503,
        headers: dict | None = None,
        fail_message: str = "overloaded",
        delay: float = 0.0,
        first_delay: float = 0.0,
        reply: str = "echo:{prompt}",
        finish_reason: str = "stop",
    ):
        self.fail_first, self.status, self.headers, self.fail_message = fail_first, status, headers or {}, fail_message
        self.delay, self.first_delay, self.reply, self.finish_reason = delay, first_delay, reply, finish_reason
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.port = self.server.server_address[1]

    def __enter__(self) -> "FakeOpenAI":
        start(self.server)
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    fake.auth.append(self.headers.get("Authorization", ""))
                    number = len(fake.bodies)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                if number == 1 and fake.first_delay:
                    time.sleep(fake.first_delay)  # longer than the client's timeout
                if number <= fake.fail_first:
                    error = {"error": {"message": fake.fail_message, "type": "error", "param": None, "code": None}}
                    status, payload, headers = fake.status, error, fake.headers
                else:
                    time.sleep(fake.delay)
                    status, payload, headers = 200, fake.answer(self.path, body), {}
                # Leave before answering: once the client has the answer it may send its next request,
                # possibly before this thread runs again.
                with fake.lock:
                    fake.in_flight -= 1
                try:
                    write_json(self, status, payload, headers)
                except OSError:  # the client gave up (timeout) and closed the connection
                    pass

            def log_message(self, *args) -> None:
                pass

        return Handler

    def answer(self, path: str, body: dict) -> dict:
        n = body.get("n", 1)
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        text = self.reply.format(prompt=prompt)
        choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        return {
            "id": "x",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": i, "finish_reason": self.finish_reason, **choice} for i in range(n)],
            # Only a total, as real servers give: 5 tokens per choice plus one left over.
            "usage": {"prompt_tokens": 3, "completion_tokens": 5 * n + 1, "total_tokens": 3 + 5 * n + 1},
        }


def test_max_concurrency_is_respected_and_order_kept():
    prompts = [f"prompt {i}" for i in range(6)]
    with FakeOpenAI(delay=0.2) as fake:
        results = openai_engine(fake.port, max_concurrency=2).generate(prompts, SamplingParams())
    assert fake.max_in_flight == 2
    assert [cs[0].text for cs in results] == [f"echo:{p}" for p in prompts]


def test_total_completion_tokens_split_across_choices():
    with FakeOpenAI() as fake:
        engine = openai_engine(fake.port)
        [completions] = engine.generate(["p"], SamplingParams(n=2))
    assert [c.completion_tokens for c in completions] == [6, 5]
    assert [c.prompt_tokens for c in completions] == [3, 3]
    assert (engine.usage.prompt_tokens, engine.usage.completion_tokens) == (3, 11)
    assert split_evenly(7, 3) == [3, 2, 2] and split_evenly(0, 2) == [0, 0] and split_evenly(4, 0) == []


def test_params_reach_the_server_and_extra_stops_are_cut():
    stops = ("S1", "S2", "S3", "S4", "CUT", "S6")
    with FakeOpenAI(reply="keep CUT drop", finish_reason="length") as fake:
        engine = openai_engine(fake.port)
        params = SamplingParams(temperature=0, top_p=0.5, max_new_tokens=7, n=1, stop=stops, seed=7)
        [[raw]], [[chat]] = engine.generate(["p"], params), engine.generate([CHAT[0]], params)
    assert raw.text == chat.text == "keep " and raw.finish_reason == "stop"
    for body in fake.bodies:
        assert body["temperature"] == 0 and body["top_p"] == 0.5 and body["max_tokens"] == 7 and body["seed"] == 7
        assert body["stop"] == list(stops[:4]) and body["model"] == "tiny"
    assert fake.bodies[0]["prompt"] == "p" and fake.bodies[1]["messages"] == CHAT[0]
    with FakeOpenAI(finish_reason="length") as fake:
        [[c]] = openai_engine(fake.port).generate(["p"], SamplingParams(seed=None))
    assert c.finish_reason == "length" and "seed" not in fake.bodies[0] and "stop" not in fake.bodies[0]


def test_retries_429_with_retry_after_zero():
    with FakeOpenAI(fail_first=1, status=429, headers={"retry-after": "0"}) as fake:
        engine = openai_engine(fake.port, max_retries=2)
        [[c]] = engine.generate(["p"], SamplingParams())
    assert c.text == "echo:p" and len(fake.bodies) == 2 and engine.usage.failures == 0


def test_retries_503_and_honours_short_retry_after():
    # Without retry-after-ms the SDK would back off 0.5 s, then 1 s (less up to 25 % jitter): >= 1.125 s.
    with FakeOpenAI(fail_first=2, status=503, headers={"retry-after-ms": "1"}) as fake:
        engine = openai_engine(fake.port, max_retries=2)
        began = time.monotonic()
        [[c]] = engine.generate([CHAT[0]], SamplingParams())
        elapsed = time.monotonic() - began
    assert c.text.startswith("echo:") and len(fake.bodies) == 3 and elapsed < 1.0


def test_honours_long_retry_after():
    # The SDK's own first backoff is at most 0.5 s; waiting 1 s shows it followed the server.
    with FakeOpenAI(fail_first=1, status=429, headers={"retry-after": "1"}) as fake:
        began = time.monotonic()
        [[c]] = openai_engine(fake.port, max_retries=1).generate(["p"], SamplingParams())
        elapsed = time.monotonic() - began
    assert c.text == "echo:p" and len(fake.bodies) == 2 and elapsed >= 1.0


def test_timeout_is_retried():
    with FakeOpenAI(first_delay=3.0) as fake:
        engine = openai_engine(fake.port, max_retries=1, request_timeout=1.0)
        [[c]] = engine.generate(["p"], SamplingParams())
    assert c.text == "echo:p" and len(fake.bodies) == 2


def test_failed_prompt_gets_no_completions_and_the_rest_go_on(caplog):
    with FakeOpenAI(fail_first=1, status=400, fail_message="prompt too long") as fake:  # 400 is not retried
        engine = openai_engine(fake.port, max_concurrency=1, max_retries=3)
        results = engine.generate(["a", "b", "c"], SamplingParams())
    assert [[c.text for c in cs] for cs in results] == [[], ["echo:b"], ["echo:c"]]
    assert len(fake.bodies) == 3
    assert (engine.usage.failures, engine.usage.requests, engine.usage.prompt_tokens) == (1, 3, 6)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "prompt too long" in warnings[0].getMessage()


def test_always_failing_server_gives_empty_completions():
    with FakeOpenAI(fail_first=10**6, status=500, headers={"retry-after-ms": "1"}) as fake:
        engine = openai_engine(fake.port, max_retries=2)
        assert engine.generate(["p"], SamplingParams(n=2)) == [[]]
    assert len(fake.bodies) == 3 and engine.usage.failures == 1 and engine.usage.completion_tokens == 0


def test_connection_refused_gives_empty_completions():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = openai_engine(port, max_retries=1)
    assert engine.generate([CHAT[0]], SamplingParams()) == [[]]
    assert engine.usage.failures == 1


def test_api_key_is_used_but_never_leaks(monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's debug logs too
    for status in (401, 400):  # a 401 body may echo (part of) the key; a 400 might too
        with FakeOpenAI(fail_first=1, status=status, fail_message=f"Incorrect API key provided: {SECRET}") as fake:
            engine = openai_engine(fake.port, max_concurrency=1, max_retries=0)
            results = engine.generate(["a", "b"], SamplingParams())
        assert results[0] == [] and results[1][0].text == "echo:b"
        assert fake.auth == [f"Bearer {SECRET}"] * 2
    out, err = capsys.readouterr()
    assert "Incorrect API key" in caplog.text  # the 400 message was logged, with the key scrubbed
    for text in (caplog.text, out, err, repr(engine), str(engine)):
        assert SECRET not in text
    for name, value in vars(engine).items():
        if name != "client":  # the SDK client holds the key for its Authorization header
            assert SECRET not in repr(value), name


def test_unset_key_with_base_url_sends_a_dummy_key():
    with FakeOpenAI() as fake:
        openai_engine(fake.port).generate(["p"], SamplingParams())
    assert fake.auth == ["Bearer EMPTY"]


def test_unset_key_without_base_url_raises_naming_the_variable():
    with pytest.raises(ValueError, match=KEY_ENV):
        OpenAIEngine(engine_config(engine="openai", model="gpt-4o-mini", api_key_env=KEY_ENV))


def test_load_engine_builds_openai_engine():
    engine = load_engine(
        engine_config(engine="openai", model="tiny", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    )
    assert isinstance(engine, OpenAIEngine) and "tiny" in repr(engine)
    engine.close()
