"""A small OpenAI-compatible HTTP server over any scalequest Engine (`scalequest serve`).

It exists so engine=openai can be tested, and used against a local model (e.g. the hf engine on a laptop),
without vLLM. Standard library only. Endpoints: GET /v1/models, POST /v1/completions and
POST /v1/chat/completions with n, max_tokens, temperature, top_p, stop and seed. Each choice also carries
a non-standard `completion_tokens` count, which OpenAIEngine uses instead of splitting the total.

For testing clients' retry and resume handling, `make_server(..., faults=Faults(rate=0.2))` makes it fail a
share of requests on purpose (HTTP 500, 429 with retry-after, a stall past the client's timeout, a connection
closed without an answer), on a schedule fixed by the seed; GET /stats (and `server.stats`) counts requests
and injected faults. Never for real serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scalequest.engines.base import Completion, Engine, SamplingParams

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request: answered with 400 and an OpenAI-style error body."""


def sampling_params(body: dict) -> SamplingParams:
    defaults = SamplingParams()
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of strings")

    def number(key: str, default, kind: type):
        value = body.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not isinstance(value, int))
        ):
            raise RequestError(f"{key!r} must be {'an integer' if kind is int else 'a number'}")
        return kind(value)

    max_tokens = number("max_tokens", None, int)
    if max_tokens is None:
        max_tokens = number("max_completion_tokens", defaults.max_new_tokens, int)
    params = SamplingParams(
        temperature=number("temperature", defaults.temperature, float),
        top_p=number("top_p", defaults.top_p, float),
        max_new_tokens=max_tokens,
        n=number("n", 1, int),
        stop=tuple(stop),
        seed=number("seed", None, int),
    )
    if params.n < 1 or params.max_new_tokens < 1 or params.temperature < 0 or not 0 < params.top_p <= 1:
        raise RequestError("need n >= 1, max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
    return params


def read_prompts(path: str, body: dict) -> list:
    if path == "/v1/completions":
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings")
        return prompts
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise RequestError("'messages' must be a non-empty list of {role, content} objects with string values")
    return [[{"role": m["role"], "content": m["content"]} for m in messages]]


def response_body(path: str, model_name: str, results: list[list[Completion]]) -> dict:
    chat = path == "/v1/chat/completions"
    choices = []
    for completion in (c for completions in results for c in completions):
        choice = {
            "index": len(choices),
            "finish_reason": completion.finish_reason,
            "completion_tokens": completion.completion_tokens,
        }
        if chat:
            choice["message"] = {"role": "assistant", "content": completion.text}
        else:
            choice.update(text=completion.text, logprobs=None)
        choices.append(choice)
    prompt_tokens = sum(completions[0].prompt_tokens for completions in results if completions)
    completion_tokens = sum(c["completion_tokens"] for c in choices)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def write_json(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    """Answer the handler's request with `payload` as a JSON body (and any extra `headers`); an OSError from a
    client that went away reaches the caller."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


FAULT_KINDS = ("500", "429", "timeout", "drop")


@dataclass(frozen=True)
class Faults:
    """Failures injected on purpose, for testing clients' retry and resume handling; never for real serving.

    A share `rate` of completion requests fails, each with one of `kinds`: "500" (an OpenAI-style server
    error), "429" (rate limited, with retry-after `retry_after` seconds), "timeout" (no answer for `stall`
    seconds, then the connection is closed: set it above the client's timeout) and "drop" (the connection is
    closed without an answer). Whether an attempt fails, and how, depends only on the seed, the request body
    and how many times that same body came before, not on timing or thread order: a rerun of the same
    requests meets the same schedule, and every retry gets a fresh draw.
    """

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    stall: float = 5.0
    retry_after: float = 0.01

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if not 0 <= self.rate <= 1 or not self.kinds or unknown:
            raise ValueError(f"need 0 <= rate <= 1 and kinds among {', '.join(FAULT_KINDS)}")

    def draw(self, request: bytes, attempt: int) -> str | None:
        """The fault of the `attempt`-th (from 0) arrival of this request body, or None to answer it."""
        digest = hashlib.sha256(b"%d:%d:" % (self.seed, attempt) + request).digest()
        if int.from_bytes(digest[:8], "big") >= self.rate * 2**64:
            return None
        return self.kinds[int.from_bytes(digest[8:16], "big") % len(self.kinds)]


class HashEngine(Engine):
    """Instant, deterministic responses per (prompt, seed, sample) for load and fault-injection runs of the
    openai client: a run through faults must give exactly the rows of a clean run. One response in eight states
    no final answer, so that removed rows go through the retries and merges too."""

    def generate(self, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        results = []
        for prompt in prompts:
            text = json.dumps(prompt, sort_keys=True)
            completions = []
            for sample in range(params.n):
                digest = hashlib.sha256(f"{params.seed}|{sample}|{text}".encode()).hexdigest()
                reply = f"Step {digest[:12]}, then step {digest[12:24]}."
                if int(digest[24:26], 16) % 8:
                    reply += f" The answer is \\boxed{{{int(digest[26:34], 16) % 1000}}}."
                completions.append(Completion(reply, len(text) // 4, len(reply) // 4, "stop"))
            results.append(completions)
        return self._count(results)


class Server(ThreadingHTTPServer):
    """The HTTP server `make_server` returns; `stats` counts what it saw (a copy; also at GET /stats)."""

    # socketserver's default listen backlog is 5: more clients than that connecting at once (one connection
    # per request, as HTTP/1.0 closes each) would have their connections dropped and retried after a second.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, faults: Faults | None):
        super().__init__(address, handler)
        self.faults = faults or Faults()
        self.counts: Counter = Counter()
        self.seen: Counter = Counter()  # request body digest -> arrivals so far
        self.counts_lock = threading.Lock()

    @property
    def stats(self) -> dict:
        """requests (completion requests), answered (200), retries (requests the client marked as a retry,
        `x-stainless-retry-count` > 0), repeats (bodies that had come before: client retries and reruns),
        faults (injected, by kind)."""
        with self.counts_lock:
            counts = dict(self.counts)
        faults = {kind: counts.pop(f"fault_{kind}", 0) for kind in FAULT_KINDS}
        base = {key: counts.get(key, 0) for key in ("requests", "answered", "retries", "repeats")}
        return {**base, "faults": faults, "faults_total": sum(faults.values())}

    def arrival(self, request: bytes, retried: bool) -> str | None:
        """Count one completion request; return the fault to inject, if any."""
        key = hashlib.sha256(request).digest()
        with self.counts_lock:
            attempt = self.seen[key]
            self.seen[key] += 1
            fault = self.faults.draw(request, attempt) if self.faults.rate else None
            self.counts.update(
                requests=1, retries=int(retried), repeats=int(attempt > 0), **({f"fault_{fault}": 1} if fault else {})
            )
        return fault

    def answered(self) -> None:
        with self.counts_lock:
            self.counts["answered"] += 1

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away mid-request (killed)
            log.debug("%s went away: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)


def make_server(
    engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None
) -> Server:
    """A server bound to host:port (0 = any free port, read it from `.server_address[1]`), not yet serving.
    `faults` makes it fail requests on purpose (see Faults); by default it fails none."""
    # Requests are handled on threads, but engines are not thread-safe: one generate() at a time.
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server: Server

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/stats":
                return self.send_json(200, self.server.stats)
            if self.path.rstrip("/") != "/v1/models":
                return self.send_error_json(404, f"no route GET {self.path}")
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "scalequest"}],
                },
            )

        def do_POST(self) -> None:
            path = self.path.rstrip("/")
            if path not in ("/v1/completions", "/v1/chat/completions"):
                return self.send_error_json(404, f"no route POST {self.path}")
            try:
                raw = self.rfile.read(max(0, int(self.headers.get("Content-Length") or 0)))
                retried = (self.headers.get("x-stainless-retry-count") or "0").strip() not in ("", "0")
                if self.inject(self.server.arrival(path.encode() + b"\n" + raw, retried)):
                    return
                body = json.loads(raw or b"null")
                if not isinstance(body, dict):
                    raise RequestError("the request body must be a JSON object")
                prompts, params = read_prompts(path, body), sampling_params(body)
            except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError and RequestError are ValueErrors
                return self.send_error_json(400, f"bad request: {err}")
            try:
                with lock:
                    results = engine.generate(prompts, params)
            except Exception as err:  # answer the client instead of dropping the connection
                log.exception("generate failed")
                return self.send_error_json(500, f"generation failed: {type(err).__name__}: {err}", "server_error")
            if not all(results):
                return self.send_error_json(500, "the engine returned no completions", "server_error")
            self.send_json(200, response_body(path, model_name, results))
            self.server.answered()

        def inject(self, fault: str | None) -> bool:
            """Fail this request as `fault` says; False when it is to be answered."""
            faults = self.server.faults
            if fault is None:
                return False
            if fault == "500":
                self.send_error_json(500, "injected fault: internal server error", "server_error")
            elif fault == "429":
                wait = {
                    "retry-after-ms": str(round(faults.retry_after * 1000)),
                    "retry-after": f"{faults.retry_after:g}",
                }
                self.send_error_json(429, "injected fault: rate limited", "rate_limit_error", wait)
            else:  # "timeout" stalls past the client's timeout first; both close the connection unanswered
                if fault == "timeout":
                    time.sleep(faults.stall)
                self.close_connection = True
            return True

        def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
            try:
                write_json(self, status, payload, headers)
            except OSError:  # the client went away (timed out, or was killed) before the answer
                self.close_connection = True

        def send_error_json(
            self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None
        ) -> None:
            error = {"error": {"message": message, "type": kind, "param": None, "code": status}}
            self.send_json(status, error, headers)

        def log_message(self, format: str, *args) -> None:  # default writes every request line to stderr
            log.debug("%s - %s", self.address_string(), format % args)

    return Server((host, port), Handler, faults)


def serve(
    engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8000, faults: Faults | None = None
) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(engine, model_name, host, port, faults)
    log.debug("serving %s at http://%s:%d/v1", model_name, host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
