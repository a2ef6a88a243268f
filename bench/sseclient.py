"""A lightweight asyncio SSE client over raw HTTP/1.1 sockets, cheap enough to hold thousands of streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

TERMINAL_TYPES = frozenset({"done", "error"})
_READ_SIZE = 65536
_MAX_ERROR_BODY = 4096


class ProtocolError(Exception):
    """The server's bytes are not valid HTTP/1.1 as this client reads it."""


class ChunkedDecoder:
    """Incremental `Transfer-Encoding: chunked` decoding; a chunk may be split across any number of reads."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "size"
        self._remaining = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> bytes:
        """The payload bytes that `data` completes (possibly none)."""
        buf = self._buf
        buf += data
        out = bytearray()
        while self._state != "done":
            if self._state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text!r}") from None
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining, self._state = size, "data"
            elif self._state == "data":
                if not buf:
                    break
                take = min(self._remaining, len(buf))
                out += buf[:take]
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data_end"
            elif self._state == "data_end":
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = "size"
            else:  # trailer section: header lines until an empty one
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                is_last = end == 0
                del buf[: end + 2]
                if is_last:
                    self._state = "done"
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Event:
    id: str | None
    event: str
    data: str


class SSEParser:
    """Incremental text/event-stream parsing by the WHATWG rules (CRLF, LF or CR line ends, comments, fields).

    Lines are cut on bytes and decoded only when complete; the terminators are ASCII, so a UTF-8 sequence
    split across reads is never decoded in halves.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._first = True
        self.last_id: str | None = None
        self.comments = 0

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf
        buf += data
        if self._first:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(bytes(buf)):
                return []  # maybe a BOM still arriving
            self._first = False
            if buf.startswith(b"\xef\xbb\xbf"):
                del buf[:3]
        events: list[Event] = []
        pos, size = 0, len(buf)
        while pos < size:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, lf if lf >= 0 else size)
            if cr >= 0:
                if cr == size - 1:
                    break  # a CR at the end may be the first half of a CRLF
                end, pos_next = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            elif lf >= 0:
                end, pos_next = lf, lf + 1
            else:
                break
            self._line(bytes(buf[pos:end]), events)
            pos = pos_next
        del buf[:pos]
        return events

    def end(self) -> list[Event]:
        """At the end of the body: a final lone CR is a line end after all (an unterminated line is dropped)."""
        events: list[Event] = []
        if self._buf.endswith(b"\r"):
            self._line(bytes(self._buf[:-1]), events)
        self._buf.clear()
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(Event(self.last_id, self._event or "message", "\n".join(self._data)))
            self._data = []
            self._event = ""
            return
        if line[0] == 0x3A:  # ":" starts a comment (the server's pings)
            self.comments += 1
            return
        name, colon, value = line.decode("utf-8", errors="replace").partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self.last_id = value
        elif name == "event":
            self._event = value


@dataclass(frozen=True, slots=True)
class Request:
    host: str
    port: int
    method: str
    path: str
    body: bytes | None = None

    @classmethod
    def post_json(cls, host: str, port: int, path: str, payload: dict[str, Any]) -> Request:
        return cls(host, port, "POST", path, json.dumps(payload, separators=(",", ":")).encode())

    @classmethod
    def get(cls, host: str, port: int, path: str) -> Request:
        return cls(host, port, "GET", path)

    def encode(self) -> bytes:
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
            # One request per connection: every sample pays the same connect cost on both systems.
            "Connection: close",
        ]
        if self.body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (self.body or b"")


@dataclass(eq=False, slots=True)
class Stream:
    """One SSE request and what it received so far; updated live, so a caller can watch it while it runs."""

    record_times: bool = False
    started: float | None = None
    headers_at: float | None = None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: int = 0
    content_events: int = 0
    # Characters of the text as the client shows it: a `reset` event starts it over (a retried generation).
    content_chars: int = 0
    content_chars_total: int = 0
    resets: int = 0
    first_content_at: float | None = None
    last_event_at: float | None = None
    terminal: str | None = None
    terminal_at: float | None = None
    terminal_data: dict[str, Any] | None = None
    error: str | None = None
    ended: float | None = None
    content_times: list[float] = field(default_factory=list)
    # Characters each content event carried (with record_times): a coalesced event carries several tokens.
    content_sizes: list[int] = field(default_factory=list)
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

    def _on_event(self, event: Event, now: float) -> None:
        self.events += 1
        self.last_event_at = now
        try:
            payload = json.loads(event.data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if kind == "content":
            self.content_events += 1
            text = payload.get("data")
            if isinstance(text, str):
                self.content_chars += len(text)
                self.content_chars_total += len(text)
            if self.first_content_at is None:
                self.first_content_at = now
            if self.record_times:
                self.content_times.append(now)
                self.content_sizes.append(len(text) if isinstance(text, str) else 0)
        elif kind == "reset":
            self.resets += 1
            self.content_chars = 0
        elif kind in TERMINAL_TYPES:
            self.terminal = str(kind)
            self.terminal_at = now
            self.terminal_data = payload


async def _read_headers(reader: asyncio.StreamReader, stream: Stream) -> str:
    """Parses the status line and headers; returns the body framing: chunked, length:<n> or close."""
    raw = await reader.readuntil(b"\r\n\r\n")
    head = raw.decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {head[0]!r}")
    stream.status = int(parts[1])
    for line in head[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        stream.headers[name.strip().lower()] = value.strip()
    if "chunked" in stream.headers.get("transfer-encoding", "").lower():
        return "chunked"
    if "content-length" in stream.headers:
        return f"length:{int(stream.headers['content-length'])}"
    return "close"


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
            if connect_limit is not None:
                await connect_limit.acquire()
            try:
                stream.started = time.perf_counter()
                reader, writer = await asyncio.open_connection(request.host, request.port, limit=_READ_SIZE)
                writer.write(request.encode())
                framing = await _read_headers(reader, stream)
                stream.headers_at = time.perf_counter()
            finally:
                if connect_limit is not None:
                    connect_limit.release()
            await _read_body(reader, stream, framing, keep_body or stream.status != 200)
    except TimeoutError:
        stream.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, ValueError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.ended = time.perf_counter()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                # Bounded: a peer that never acknowledges the close must not hold the caller.
                await asyncio.wait_for(writer.wait_closed(), 2.0)
    if stream.error is None and not 200 <= stream.status < 300:
        stream.error = f"HTTP {stream.status}: {stream.body[:300].decode('utf-8', errors='replace')}"
    return stream


async def _read_body(reader: asyncio.StreamReader, stream: Stream, framing: str, keep_body: bool) -> None:
    decoder = ChunkedDecoder() if framing == "chunked" else None
    left = int(framing.split(":", 1)[1]) if framing.startswith("length:") else None
    parser = SSEParser()
    body = bytearray()
    while stream.terminal is None:
        data = await reader.read(_READ_SIZE)
        now = time.perf_counter()
        ended = not data
        if ended:
            if decoder is not None and not decoder.done:
                raise ProtocolError("connection closed inside a chunked body")
            if left:
                raise ProtocolError(f"connection closed with {left} body bytes missing")
        if decoder is not None:
            data = decoder.feed(data)
        elif left is not None:
            data = data[:left]
            left -= len(data)
        ended = ended or (decoder is not None and decoder.done) or left == 0
        if keep_body:
            if len(body) < _MAX_ERROR_BODY:
                body += data[: _MAX_ERROR_BODY - len(body)]
        else:
            events = parser.feed(data)
            if ended:
                events += parser.end()
            for event in events:
                stream._on_event(event, now)
                if stream.terminal is not None:
                    break  # the terminal event is last by contract; stop reading and close
        if ended:
            break
    stream.body = bytes(body)
