"""The load generator's client: HTTP/1.1 over asyncio sockets and an SSE reader, cheap enough for 10,000 streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

_MAX_ERROR_BODY = 4096


@dataclass(frozen=True, slots=True)
class Request:
    host: str
    port: int
    method: str
    path: str
    body: bytes | None = None

    @classmethod
    def to(cls, url: str, payload: dict[str, Any] | None = None) -> Request:
        """GET `url`, or POST `payload` to it as JSON."""
        parts = urlsplit(url)
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, "GET" if body is None else "POST", path, body)

    def encode(self) -> bytes:
        # One request per connection: every sample pays the same connect cost on every system.
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "Accept: text/event-stream\r\nConnection: close\r\n"
        if self.body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return (head + "\r\n").encode("ascii") + (self.body or b"")


@dataclass(eq=False, slots=True)
class Stream:
    """One SSE request and what it received so far; updated live, so a caller can watch it while it runs."""

    started: float | None = None
    headers_at: float | None = None
    status: int = 0
    events: int = 0
    content_events: int = 0
    # Characters of the text as the client shows it: a `reset` event starts it over (a retried generation).
    content_chars: int = 0
    resets: int = 0
    first_content_at: float | None = None
    last_event_at: float | None = None
    terminal: str | None = None
    terminal_at: float | None = None
    terminal_data: dict[str, Any] | None = None
    error: str | None = None
    ended: float | None = None
    # Arrival time and text of each content event (a batched event carries several tokens).
    content_times: list[float] = field(default_factory=list)
    content_texts: list[str] = field(default_factory=list)
    body: bytes = b""

    @property
    def ttft(self) -> float | None:
        """Seconds from starting to connect to the first `content` event."""
        if self.started is None or self.first_content_at is None:
            return None
        return self.first_content_at - self.started

    @property
    def ok(self) -> bool:
        return self.error is None and self.terminal == "done"

    def on_data(self, data: bytes, now: float) -> None:
        """One event's `data:` payload."""
        self.events += 1
        self.last_event_at = now
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        kind = payload.get("type") if isinstance(payload, dict) else None
        if kind == "content":
            text = payload.get("data")
            text = text if isinstance(text, str) else ""
            self.content_events += 1
            self.content_chars += len(text)
            if self.first_content_at is None:
                self.first_content_at = now
            self.content_times.append(now)
            self.content_texts.append(text)
        elif kind == "reset":
            self.resets += 1
            self.content_chars = 0
        elif kind in ("done", "error"):
            self.terminal, self.terminal_at, self.terminal_data = str(kind), now, payload


async def _read_head(reader: asyncio.StreamReader, stream: Stream) -> dict[str, str]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    stream.status = int(head[0].split(" ", 2)[1])
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}


async def _chunks(reader: asyncio.StreamReader, headers: dict[str, str]) -> Any:
    """The body's pieces as they arrive (a chunk of a chunked body is one send of the server's)."""
    if "chunked" not in headers.get("transfer-encoding", ""):
        length = int(headers.get("content-length", "0"))
        yield await reader.readexactly(length) if length else await reader.read()
        return
    while size := int((await reader.readline()).split(b";")[0], 16):
        yield (await reader.readexactly(size + 2))[:-2]


async def _read_events(reader: asyncio.StreamReader, headers: dict[str, str], stream: Stream) -> None:
    buffer = b""
    async for chunk in _chunks(reader, headers):
        now = time.perf_counter()
        # The relay and the baselines end lines with LF; CRLF is accepted too. A comment (ping) has no data.
        *blocks, buffer = (buffer + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        for block in blocks:
            data = b"\n".join(line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
            if data:
                stream.on_data(data, now)
            if stream.terminal is not None:
                return  # the terminal event is last by contract


async def fetch(
    request: Request,
    stream: Stream | None = None,
    *,
    max_seconds: float = 60.0,
    connect_limit: asyncio.Semaphore | None = None,
    keep_body: bool = False,
) -> Stream:
    """Runs one request to its end (terminal event, end of body or error); never raises but for cancellation.

    `connect_limit` is held from connecting until the response headers arrive, so thousands of streams can be
    started without overflowing the server's accept backlog.
    """
    stream = stream if stream is not None else Stream()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(max_seconds):
            async with connect_limit or contextlib.nullcontext():
                stream.started = time.perf_counter()
                reader, writer = await asyncio.open_connection(request.host, request.port, limit=1 << 16)
                writer.write(request.encode())
                headers = await _read_head(reader, stream)
                stream.headers_at = time.perf_counter()
            if keep_body or stream.status != 200:
                stream.body = b"".join([c async for c in _chunks(reader, headers)])[:_MAX_ERROR_BODY]
            else:
                await _read_events(reader, headers, stream)
    except TimeoutError:
        stream.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.ended = time.perf_counter()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)  # a peer that never acknowledges must not hold us
    if stream.error is None and not 200 <= stream.status < 300:
        stream.error = f"HTTP {stream.status}: {stream.body[:300].decode('utf-8', errors='replace')}"
    elif stream.error is None and not keep_body and stream.terminal is None:
        stream.error = "ended without a terminal event"
    return stream
