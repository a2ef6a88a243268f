"""The load generator's client: HTTP/1.1 over asyncio sockets and an SSE reader, cheap enough for 10,000 streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson


@dataclass(frozen=True, slots=True)
class Request:
    host: str
    port: int
    raw: bytes  # the whole request, encoded once

    @classmethod
    def to(cls, url: str, payload: dict[str, Any] | None = None) -> Request:
        """GET `url`, or POST `payload` to it as JSON."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        # One request per connection: every sample pays the same connect cost on every system.
        head = f"{'GET' if payload is None else 'POST'} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        head += "Accept: text/event-stream\r\nConnection: close\r\n"
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return cls(host, port, (head + "\r\n").encode("ascii") + body)


@dataclass(eq=False, slots=True)
class Stream:
    """One SSE request and what it received so far; updated live, so a caller can watch it while it runs."""

    started: float = 0.0
    headers_at: float | None = None
    status: int = 0
    events: int = 0
    # Characters of the text as the client shows it: a `reset` event starts it over (a retried generation).
    content_chars: int = 0
    first_content_at: float | None = None
    last_event_at: float | None = None
    terminal: dict[str, Any] | None = None  # the `done` or `error` event
    error: str | None = None
    ended: float | None = None
    # Arrival time and text of each content event (a batched event carries several tokens).
    content_times: list[float] = field(default_factory=list)
    content_texts: list[str] = field(default_factory=list)
    # perf_counter (the times above) -> wall clock (the fake upstream's send stamps, clock=1), taken when the
    # round makes the stream, not once per process: this VM's wall clock stepped by ~0.9 s in one `make bench`.
    wall_offset: float = field(default_factory=lambda: time.time() - time.perf_counter())
    body: bytes = b""  # of a response that is not an event stream

    @property
    def ttft(self) -> float | None:
        """Seconds from starting to connect to the first `content` event."""
        return None if self.first_content_at is None else self.first_content_at - self.started

    @property
    def ok(self) -> bool:
        return self.error is None and self.terminal is not None and self.terminal["type"] == "done"

    def on_data(self, data: bytes, now: float) -> None:
        """One event's `data:` payload: a JSON object with a `type`, as the relay and the baselines send."""
        self.events += 1
        self.last_event_at = now
        payload = orjson.loads(data)
        if payload["type"] == "content":
            self.content_chars += len(payload["data"])
            self.first_content_at = self.first_content_at or now
            self.content_times.append(now)
            self.content_texts.append(payload["data"])
        elif payload["type"] == "reset":
            self.content_chars = 0
        elif payload["type"] in ("done", "error"):
            self.terminal = payload


async def _chunks(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive (a chunk of a chunked body is one send of the server's)."""
    if not chunked:
        yield await reader.read()  # to the end: the server closes (Connection: close)
        return
    while size := int((await reader.readline()).split(b";")[0], 16):
        yield (await reader.readexactly(size + 2))[:-2]


async def _read_events(chunks: AsyncIterator[bytes], stream: Stream) -> None:
    buffer = b""
    async for chunk in chunks:
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
    request: Request, stream: Stream | None = None, *, max_seconds: float = 60.0, limit: asyncio.Semaphore | None = None
) -> Stream:
    """Runs one request to its end (terminal event, end of body or error); never raises but for cancellation.
    `limit` is held from connecting until the response headers arrive (the server's accept backlog is finite)."""
    stream = stream if stream is not None else Stream()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(max_seconds):
            async with limit or contextlib.nullcontext():
                stream.started = time.perf_counter()
                reader, writer = await asyncio.open_connection(request.host, request.port, limit=1 << 16)
                writer.write(request.raw)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                stream.headers_at = time.perf_counter()
            stream.status = int(head.split(" ", 2)[1])
            chunks = _chunks(reader, "\r\ntransfer-encoding: chunked" in head)
            if stream.status == 200 and "\r\ncontent-type: text/event-stream" in head:
                await _read_events(chunks, stream)
            else:
                stream.body = b"".join([chunk async for chunk in chunks])[:4096]
    except TimeoutError:
        stream.error = "timeout"
    except (OSError, EOFError, asyncio.LimitOverrunError, ValueError, LookupError, TypeError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.ended = time.perf_counter()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)  # a peer that never acknowledges must not hold us
    if stream.error is None and not 200 <= stream.status < 300:
        stream.error = f"HTTP {stream.status}: {stream.body[:300].decode('utf-8', errors='replace')}"
    elif stream.error is None and not stream.body and stream.terminal is None:
        stream.error = "ended without a terminal event"
    return stream
