"""A small OpenAI-compatible HTTP server over any scalequest Engine (`scalequest serve`).

It exists so engine=openai can be tested, and used against a local model (e.g. the hf engine on a laptop),
without vLLM. Standard library only. Endpoints: GET /v1/models, POST /v1/completions and
POST /v1/chat/completions with n, max_tokens, temperature, top_p, stop and seed. Each choice also carries
a non-standard `completion_tokens` count, which OpenAIEngine uses instead of splitting the total.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
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


def make_server(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server bound to host:port (0 = any free port, read it from `.server_address[1]`), not yet serving."""
    # Requests are handled on threads, but engines are not thread-safe: one generate() at a time.
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
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
                body = json.loads(self.rfile.read(max(0, int(self.headers.get("Content-Length") or 0))) or b"null")
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

        def send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

        def log_message(self, format: str, *args) -> None:  # default writes every request line to stderr
            log.debug("%s - %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


def serve(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(engine, model_name, host, port)
    log.debug("serving %s at http://%s:%d/v1", model_name, host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
