"""The provider side of a generation: one AsyncOpenAI client per process, streaming, error classification."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pydantic

from shared.config import Settings
from shared.errors import ErrorCode
from shared.jobs import StoredRequest
from worker.body import Opened
from worker.stream_parse import DONE, DataDecoder, Outcome, Piece, ProviderError, read_chunk

__all__ = [
    "Outcome",
    "Piece",
    "UpstreamError",
    "classify",
    "describe",
    "make_client",
    "open_stream",
    "release",
    "stream_pieces",
]

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# How long the rest of a body after [DONE] may take to arrive (as the SDK allows) before the connection is dropped.
_DRAIN_S = 0.1


def make_client(settings: Settings) -> openai.AsyncOpenAI:
    """Explicit timeouts: the SDK's default read timeout is 600 s, and a stalled provider must end sooner.

    The SDK's aiohttp transport (its `aiohttp` extra): aiohttp parses HTTP in C, and reading the streamed
    body through it costs the worker about half the CPU per token of the default HTTP stack.
    """
    timeout = openai.Timeout(
        connect=settings.upstream_connect_timeout_s,
        read=settings.upstream_read_timeout_s,
        write=30.0,
        pool=30.0,
    )
    return openai.AsyncOpenAI(
        api_key=settings.provider_key or "missing-key",
        # Explicit even when unset: the SDK would read an empty OPENAI_BASE_URL from the environment as "".
        base_url=settings.openai_base_url or OPENAI_DEFAULT_BASE_URL,
        timeout=timeout,
        max_retries=settings.upstream_max_retries,
        http_client=openai.DefaultAioHttpClient(timeout=timeout),
    )


class UpstreamError(Exception):
    """A provider failure, already classified; carries no provider text (it can echo credentials)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def open_stream(client: openai.AsyncOpenAI, request: StoredRequest) -> Opened:
    """Sends the request (the SDK: auth, retries before the first byte, status errors); the body is unread."""
    manager = client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
        model=request.model,
        messages=request.messages,
        stream=True,
        stream_options={"include_usage": True},
        **request.provider_args,
    )
    return Opened(manager, await manager.__aenter__())


async def stream_pieces(
    client: openai.AsyncOpenAI,
    request: StoredRequest,
    outcome: Outcome,
    opening: asyncio.Task[Opened] | None = None,
) -> AsyncIterator[Piece]:
    """Yields the answer's pieces; raises UpstreamError for every failure, including a truncated stream.

    The body is read raw, which costs a fraction of the SDK's typed chunks. `opening`: the same request,
    already sent (worker/early.py); its failure is classified like any other.
    """
    try:
        opened = await (_opened(opening) if opening is not None else open_stream(client, request))
        # Closed however this generator ends, also when it is closed or cancelled mid-stream.
        try:
            async for piece in _read(opened, outcome):
                yield piece
        finally:
            await opened.aclose()
    except UpstreamError:
        raise
    except Exception as exc:
        raise UpstreamError(classify(exc), describe(exc)) from None
    if outcome.finish_reason is None:
        raise UpstreamError(ErrorCode.UPSTREAM_BAD_RESPONSE, "stream ended without a finish_reason")


async def _opened(opening: asyncio.Task[Opened]) -> Opened:
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        # Cancelled while the request was on its way, or in the instant it arrived: nobody else will close it.
        release(opening)
        raise


def release(opening: asyncio.Task[Opened]) -> None:
    """A request sent for a stream that will not be read: cancelled on its way, or closed once answered."""
    if not opening.done():
        opening.cancel()  # the SDK closes a connection whose request is cancelled
    elif not opening.cancelled() and opening.exception() is None:
        closing = asyncio.ensure_future(_close(opening.result()))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()  # referenced until done: the loop keeps only weak references


async def _close(opened: Opened) -> None:
    with contextlib.suppress(Exception):
        await opened.aclose()


async def _read(opened: Opened, outcome: Outcome) -> AsyncIterator[Piece]:
    decoder = DataDecoder()
    async for raw in opened.chunks():
        for data in decoder.feed(raw):
            if data.startswith(DONE):
                await opened.rest(_DRAIN_S)
                return
            for piece in read_chunk(data, outcome):
                yield piece
    for data in decoder.finish():
        if data.startswith(DONE):
            return
        for piece in read_chunk(data, outcome):
            yield piece


_STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.UPSTREAM_BAD_REQUEST,
    401: ErrorCode.UPSTREAM_AUTH,
    403: ErrorCode.UPSTREAM_AUTH,
    404: ErrorCode.UPSTREAM_BAD_REQUEST,
    408: ErrorCode.UPSTREAM_TIMEOUT,
    413: ErrorCode.UPSTREAM_BAD_REQUEST,
    422: ErrorCode.UPSTREAM_BAD_REQUEST,
    429: ErrorCode.UPSTREAM_RATE_LIMITED,
}


_PARSE_ERRORS = (json.JSONDecodeError, pydantic.ValidationError, AttributeError, TypeError, KeyError)


def _transport_kind(exc: BaseException) -> str | None:
    """Mid-stream transport errors come raw from the SDK's HTTP library (httpx, or httpx2 in openai >= 3):
    recognise them by class name so either library works."""
    names = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0].startswith("httpx")}
    if "TimeoutException" in names:
        return "timeout"
    if "TransportError" in names or "StreamError" in names:
        return "transport"
    return None


def _aiohttp_cause(exc: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp error behind an SDK or httpx2 one (the chain is SDK error -> httpx2 error -> aiohttp error)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, aiohttp.ClientError):
            return seen
        seen = seen.__cause__
    return None


def _aiohttp_kind(exc: BaseException) -> str | None:
    """The aiohttp error behind an SDK or httpx2 one, judged by itself: the SDK's transport maps every
    aiohttp connection error (a refused connection, a server that hung up) to a connect *timeout*."""
    cause = _aiohttp_cause(exc)
    if cause is None:
        return None
    return "timeout" if isinstance(cause, aiohttp.ServerTimeoutError) else "transport"


def classify(exc: BaseException) -> ErrorCode:
    """Map an SDK, transport or parsing failure to the error code clients get (shared.errors.ErrorCode)."""
    transport = _aiohttp_kind(exc) or _transport_kind(exc)
    if transport == "timeout" or (transport is None and isinstance(exc, openai.APITimeoutError)):
        return ErrorCode.UPSTREAM_TIMEOUT
    if isinstance(exc, openai.APIStatusError):
        code = _STATUS_CODES.get(exc.status_code)
        if code is not None:
            return code
        return ErrorCode.UPSTREAM_UNAVAILABLE if exc.status_code >= 500 else ErrorCode.UPSTREAM_BAD_REQUEST
    if isinstance(exc, openai.APIConnectionError) or transport == "transport":
        return ErrorCode.UPSTREAM_UNAVAILABLE
    if isinstance(exc, (openai.APIError, ProviderError)):
        # An error object sent inside the stream by the provider.
        return ErrorCode.UPSTREAM_UNAVAILABLE
    if isinstance(exc, _PARSE_ERRORS):
        return ErrorCode.UPSTREAM_BAD_RESPONSE
    return ErrorCode.INTERNAL


def describe(exc: BaseException) -> str:
    """A log-safe description: the exception's type and status, never its message or request."""
    parts = [type(exc).__name__]
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        parts.append(f"status={status}")
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code.isidentifier():
        parts.append(f"provider_code={code}")
    cause = _aiohttp_cause(exc)
    if cause is not None:  # the SDK calls a refused connection a timeout: name what really happened
        parts.append(f"cause={type(cause).__name__}")
    return " ".join(parts)
