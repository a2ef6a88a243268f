"""Upstream end of the flow: a local OpenAI-compatible chat-completions server (demo model, test faults)."""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

# Successful models. `demo` is what `sse-relay dev` uses, so it streams slowly enough for a human to see it.
NORMAL_MODELS = ("demo", "qwen-plus", "gpt-4o-mini")
# Scenarios whose fault happens after the HTTP 200 (or before its headers, for stall-before).
STREAM_FAULTS = ("malformed", "truncate", "stall", "stall-before", "cut")
# Only listed for discovery: any `status-<400..599>` works.
LISTED_STATUS_MODELS = tuple(f"status-{code}" for code in (400, 401, 403, 404, 429, 500, 503))
KNOWN_MODELS = (*NORMAL_MODELS, "reasoning", *STREAM_FAULTS, *LISTED_STATUS_MODELS)

REASONING_TEXT = "Let me think about this. " * 2
DEFAULT_CHUNK = 4
DEFAULT_AFTER = 2
DEFAULT_STALL_S = 3600
DEMO_DELAY_MS = 25
MALFORMED_LINE = b'data: {"id": "broken", not json\n\n'
# How long `malformed` keeps the connection open after the bad line, so the client fails on parsing, not EOF.
MALFORMED_LINGER_S = 1.0

_PARAMS = frozenset({"delay_ms", "chunk", "after", "fail_times", "retry_after_ms", "stall_s", "vary", "clock"})
_STATUS_MODEL = re.compile(r"status-(\d{3})")


def _content_text(content: Any) -> str:
    """The text of one message's content: a plain string, or the "text" parts of a multi-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "".join(part["text"] for part in parts if isinstance(part.get("text"), str))
    return ""


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The deterministic reply to a conversation: an echo on request, else a fixed multi-byte demo text."""
    prompt = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            prompt = _content_text(message.get("content"))
            break
    if prompt.startswith("echo:"):
        return prompt[len("echo:") :]
    # Non-ASCII on purpose (CJK, emoji, accents): it must survive every UTF-8 boundary up to the browser.
    return (
        f'This is the sse-relay demo model (no API key is configured). You said: "{prompt}". '
        "Streaming works: 你好，世界 🌍 — naïve café, ünïcödé ✓. "  # noqa: RUF001
        "Set an API key to talk to a real model; until then every reply is this deterministic text, "
        "sent a few characters at a time."
    )


def chunk_text(text: str, size: int) -> list[str]:
    """Split text into pieces of `size` code points (the last may be shorter); empty text gives no pieces."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass
class _Stats:
    """Process-wide counters read by the tests through GET /_fake/stats."""

    requests: int = 0
    active: int = 0
    completed: int = 0
    client_disconnects: int = 0
    last_request_ns: int = 0  # when the latest chat request arrived (epoch ns), for span timing in tests


_STATS = _Stats()
# (model string as sent, last user prompt) -> requests seen, so `fail_times=N` fails only the first N.
_ATTEMPTS: dict[tuple[str, str], int] = {}
# The same, for `vary=1`: the n-th request's answer starts with "[n] ".
_VARIANTS: dict[tuple[str, str], int] = {}


class _ApiError(Exception):
    """An OpenAI-style error answer; raised anywhere in request handling, turned into a JSON response once."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> _ApiError:
    return _ApiError(400, message, type_="invalid_request_error", param=param, code=code)


@dataclass(frozen=True)
class Scenario:
    """What one `model` string asks for: `<name>[@key=value,...]`."""

    name: str
    status: int | None
    delay_s: float
    chunk: int
    after: int
    fail_times: int | None
    retry_after_ms: int | None
    stall_s: float
    # vary=1: each request for the same (model, prompt) answers differently ("[n] " before the text), as a
    # sampling model would on a retry; without it every answer is the same, as at temperature 0.
    vary: bool = False
    # clock=1: each content piece carries the time it was sent instead of its text (benchmarks measure lateness).
    clock: bool = False


def parse_model(model: str) -> Scenario:
    """Parse the scenario grammar; an unknown name is a 404 like OpenAI's, a bad parameter a 400."""
    name, _, raw_params = model.partition("@")
    status: int | None = None
    status_match = _STATUS_MODEL.fullmatch(name)
    if status_match is not None and 400 <= int(status_match.group(1)) <= 599:
        status = int(status_match.group(1))
    elif name not in NORMAL_MODELS and name != "reasoning" and name not in STREAM_FAULTS:
        raise _ApiError(
            404,
            f"The model `{model}` does not exist",
            type_="invalid_request_error",
            param="model",
            code="model_not_found",
        )
    params: dict[str, int] = {}
    for item in filter(None, raw_params.split(",")):
        key, eq, value = item.partition("=")
        # Rejecting unknown keys turns a typo in a test's model string into a loud 400, not a silent default.
        if not eq or key not in _PARAMS:
            raise _bad_request(f"Unknown scenario parameter {item!r}; known: {sorted(_PARAMS)}", "model")
        try:
            params[key] = int(value)
        except ValueError:
            message = f"Scenario parameter {key} must be an integer, got {value!r}"
            raise _bad_request(message, "model") from None
        if params[key] < 0 or (key == "chunk" and params[key] < 1):
            raise _bad_request(f"Scenario parameter {key} is out of range: {value}", "model")
    default_delay = DEMO_DELAY_MS if name == "demo" else 0
    return Scenario(
        name=name,
        status=status,
        delay_s=params.get("delay_ms", default_delay) / 1000,
        chunk=params.get("chunk", DEFAULT_CHUNK),
        after=params.get("after", DEFAULT_AFTER),
        fail_times=params.get("fail_times"),
        retry_after_ms=params.get("retry_after_ms"),
        stall_s=params.get("stall_s", DEFAULT_STALL_S),
        vary=params.get("vary", 0) > 0,
        clock=bool(params.get("clock")),
    )


def _fault_this_time(scenario: Scenario, model: str, prompt: str) -> bool:
    """Whether this request gets the scenario's fault; with fail_times=N only the first N attempts do."""
    if scenario.fail_times is None:
        return True
    key = (model, prompt)
    _ATTEMPTS[key] = _ATTEMPTS.get(key, 0) + 1
    return _ATTEMPTS[key] <= scenario.fail_times


def _status_error(status: int, model: str, scenario: Scenario, authorization: str | None) -> _ApiError:
    """The simulated upstream error; 401/403 echo the credential back so secret-leak tests have a target."""
    # Deliberately hostile: real providers do quote (part of) the key, and nothing downstream may relay it.
    credential = authorization if authorization is not None else "(no Authorization header)"
    type_, code = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    if status == 401:
        code = "invalid_api_key"
        message = (
            f"Incorrect API key provided: {credential}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
    elif status == 403:
        code = "permission_denied"
        message = f"The credentials {credential} are not allowed to use the model `{model}`."
    elif status == 404:
        code = "model_not_found"
        message = f"The model `{model}` does not exist or you do not have access to it."
    elif status == 429:
        type_, code = "requests", "rate_limit_exceeded"
        message = f"Rate limit reached for `{model}` (simulated). Please try again later."
    elif status == 500:
        message = "The server had an error while processing your request. Sorry about that! (simulated)"
    elif status == 503:
        message = "The engine is currently overloaded, please try again later. (simulated)"
    else:
        message = f"Simulated HTTP {status} from the `{model}` scenario."
    headers = None
    if scenario.retry_after_ms is not None:
        # The openai SDK prefers the millisecond header, so retry tests stay fast; plain clients get seconds.
        headers = {
            "retry-after-ms": str(scenario.retry_after_ms),
            "retry-after": str(math.ceil(scenario.retry_after_ms / 1000)),
        }
    return _ApiError(status, message, type_=type_, code=code, headers=headers)


def _event(payload: dict[str, Any]) -> bytes:
    """One SSE event as OpenAI writes it: compact JSON with raw UTF-8, then a blank line."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class _Completion:
    """Everything one validated chat-completions request needs to produce its answer."""

    model: str
    scenario: Scenario
    messages: list[dict[str, Any]]
    include_usage: bool
    max_tokens: int | None
    fault: bool
    completion_id: str
    created: int
    variant: int | None = None

    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            # OpenAI puts an explicit null on every chunk but the last once usage is requested.
            payload["usage"] = None
        return payload

    def content_pieces(self) -> tuple[list[str], str]:
        """The content chunks to send and the finish_reason, honouring max_tokens (one chunk = one token)."""
        answer = answer_for(self.messages)
        if self.variant is not None:
            answer = f"[{self.variant}] {answer}"
        pieces = chunk_text(answer, self.scenario.chunk)
        if self.max_tokens is not None and self.max_tokens < len(pieces):
            return pieces[: self.max_tokens], "length"
        return pieces, "stop"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = sum(len(_content_text(m.get("content"))) for m in self.messages) // 4 + 1
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }


class _CutConnection(Exception):
    """Raised by the `cut` body to make the response end without its terminating chunk."""


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _stamped(piece: str) -> str:
    """The piece's length, filled with the send time: `1764600000.123456;` (18 characters), cut or padded."""
    return f"{time.time():.6f};"[: len(piece)].ljust(len(piece), "_")


async def _stream_body(c: _Completion) -> AsyncGenerator[bytes, None]:
    """The SSE body, event by event; the mid-stream faults branch off after `after` content chunks."""
    scenario = c.scenario
    yield _event(c.chunk({"role": "assistant", "content": ""}, None))
    if scenario.name == "reasoning":
        for piece in chunk_text(REASONING_TEXT, scenario.chunk):
            await _pause(scenario.delay_s)
            # content: null next to reasoning_content is what DeepSeek/Qwen-style providers actually send.
            yield _event(c.chunk({"content": None, "reasoning_content": piece}, None))
    pieces, finish_reason = c.content_pieces()
    head, tail = (pieces[: scenario.after], pieces[scenario.after :]) if c.fault else (pieces, [])
    for piece in head:
        await _pause(scenario.delay_s)
        yield _event(c.chunk({"content": _stamped(piece) if scenario.clock else piece}, None))
    if c.fault:
        if scenario.name == "malformed":
            yield MALFORMED_LINE
            await asyncio.sleep(MALFORMED_LINGER_S)
            return
        if scenario.name == "truncate":
            return
        if scenario.name == "cut":
            raise _CutConnection
        if scenario.name == "stall":
            # Cancelled by _RacingResponse as soon as the client goes away; otherwise the stream resumes.
            await asyncio.sleep(scenario.stall_s)
    for piece in tail:
        await _pause(scenario.delay_s)
        yield _event(c.chunk({"content": _stamped(piece) if scenario.clock else piece}, None))
    yield _event(c.chunk({}, finish_reason))
    if c.include_usage:
        yield _event({**c.chunk({}, None), "choices": [], "usage": c.usage(len(pieces))})
    yield b"data: [DONE]\n\n"


async def _json_body(c: _Completion) -> AsyncGenerator[bytes, None]:
    """The non-streaming answer as one `chat.completion` object."""
    pieces, finish_reason = c.content_pieces()
    message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces), "refusal": None}
    if c.scenario.name == "reasoning":
        message["reasoning_content"] = REASONING_TEXT
    yield json.dumps(
        {
            "id": c.completion_id,
            "object": "chat.completion",
            "created": c.created,
            "model": c.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": c.usage(len(pieces)),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


# Set in the request's task when `cut` aborts on purpose, so uvicorn's "returned without completing response"
# complaint about that one request is dropped (each request runs in its own task, so this never leaks).
_CUT_ON_PURPOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("sse_relay_demo_cut", default=False)


class _SuppressIntentionalCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _CUT_ON_PURPOSE.get()


logging.getLogger("uvicorn.error").addFilter(_SuppressIntentionalCut())


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _RacingResponse(StreamingResponse):
    """A streaming response raced against the client's disconnect.

    Starlette only watches for disconnects on ASGI < 2.4 servers and never during a delay before the headers;
    racing explicitly makes `stall`/`stall-before` stop promptly on every server and lets us count why a
    stream ended.
    """

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        *,
        media_type: str,
        headers_delay_s: float = 0.0,
        is_stream: bool = True,
    ) -> None:
        super().__init__(body, media_type=media_type, headers={"cache-control": "no-cache"})
        self._body = body
        self._headers_delay_s = headers_delay_s
        self._is_stream = is_stream

    async def _pump(self, send: Send) -> None:
        try:
            await _pause(self._headers_delay_s)
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._body.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._is_stream:
            _STATS.active += 1
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        outcome = "client_disconnect"
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            # The pump is checked first: after a complete response the server also reports a disconnect.
            if pump.done():
                error = pump.exception()
                if error is None:
                    outcome = "completed"
                elif isinstance(error, _CutConnection):
                    # Returning without the final body message makes the server drop the connection mid-body.
                    outcome = "cut"
                    _CUT_ON_PURPOSE.set(True)
                elif not isinstance(error, OSError):  # OSError: an ASGI 2.4 server telling us the client left
                    raise error
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            if self._is_stream:
                _STATS.active -= 1
                if outcome == "completed":
                    _STATS.completed += 1
                elif outcome == "client_disconnect":
                    _STATS.client_disconnects += 1


async def _parse_request(request: Request) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """Validate the JSON body the way OpenAI does, as 400s with an error body."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise _bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly.)"
        ) from None
    if not isinstance(body, dict):
        raise _bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad_request("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _bad_request("'messages' must be a non-empty array of message objects.", "messages")
    return body, model, messages


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad_request(f"Invalid 'max_tokens': {value!r}; expected an integer >= 1.", "max_tokens")
    return value


async def _respond(request: Request) -> Response:
    """Turn one chat-completions request into its response; every refusal is raised as an _ApiError."""
    body, model, messages = await _parse_request(request)
    scenario = parse_model(model)
    stream = body.get("stream") is True
    max_tokens = _max_tokens(body)
    if not stream and scenario.name in STREAM_FAULTS and scenario.name != "stall-before":
        raise _bad_request(f"The `{scenario.name}` scenario needs stream=true.", "stream")
    user_messages = [m for m in messages if m.get("role") == "user"]
    last_prompt = _content_text(user_messages[-1].get("content")) if user_messages else ""
    fault = False
    if scenario.status is not None or scenario.name in STREAM_FAULTS:
        fault = _fault_this_time(scenario, model, last_prompt)
    variant = None
    if scenario.vary:
        variant = _VARIANTS[(model, last_prompt)] = _VARIANTS.get((model, last_prompt), 0) + 1
    if fault and scenario.status is not None:
        raise _status_error(scenario.status, model, scenario, request.headers.get("authorization"))
    stream_options = body.get("stream_options")
    completion = _Completion(
        model=model,
        scenario=scenario,
        messages=messages,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        max_tokens=max_tokens,
        fault=fault,
        completion_id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        variant=variant,
    )
    delay = scenario.stall_s if fault and scenario.name == "stall-before" else 0.0
    if stream:
        sse_body = _stream_body(completion)
        return _RacingResponse(sse_body, media_type="text/event-stream", headers_delay_s=delay)
    json_body = _json_body(completion)
    return _RacingResponse(json_body, media_type="application/json", headers_delay_s=delay, is_stream=False)


async def chat_completions(request: Request) -> Response:
    _STATS.requests += 1
    _STATS.last_request_ns = time.time_ns()
    try:
        return await _respond(request)
    except _ApiError as error:
        return error.response()


async def list_models(request: Request) -> Response:
    created = int(time.time())
    owner = "sse-relay-demo"
    data = [{"id": name, "object": "model", "created": created, "owned_by": owner} for name in KNOWN_MODELS]
    return JSONResponse({"object": "list", "data": data})


def _stats_body() -> dict[str, int]:
    return {
        "requests": _STATS.requests,
        "active": _STATS.active,
        "completed": _STATS.completed,
        "client_disconnects": _STATS.client_disconnects,
        "last_request_ns": _STATS.last_request_ns,
    }


async def stats(request: Request) -> Response:
    return JSONResponse(_stats_body())


async def reset(request: Request) -> Response:
    # `active` is a live gauge of streams still running, not a counter: zeroing it would go negative later.
    _STATS.requests = _STATS.completed = _STATS.client_disconnects = _STATS.last_request_ns = 0
    _ATTEMPTS.clear()
    _VARIANTS.clear()
    return JSONResponse(_stats_body())


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/_fake/stats", stats, methods=["GET"]),
        Route("/_fake/reset", reset, methods=["POST"]),
    ]
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible demo/fake chat-completions server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
