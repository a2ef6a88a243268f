"""Provider bytes -> answer pieces: the worker's per-chunk hot path, an SSE `data:` decoder and a chunk reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

DONE = b"[DONE]"


@dataclass(frozen=True, slots=True)
class Piece:
    kind: Literal["content", "reasoning"]
    text: str


@dataclass(slots=True)
class Outcome:
    """Filled in while streaming: how the provider ended the answer."""

    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class DataDecoder:
    """Server-sent events as bytes in, each event's data out (its `data:` lines joined by a newline).

    Lines may end in LF, CRLF or CR and may be split anywhere across network reads. Comments, `event:`, `id:`
    and `retry:` lines are skipped (chat completions carry everything in the data), and so is an event without
    data, as a browser's EventSource skips it.
    """

    __slots__ = ("_data", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._rest + chunk if self._rest else chunk
        held_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                # Maybe the first half of a CRLF: decide when the next byte arrives.
                buffer, held_cr = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._rest = lines.pop() + held_cr
        return self._events(lines)

    def finish(self) -> list[bytes]:
        """The end of the body: a last line without its line ending still counts, an unended event does not."""
        rest, self._rest = self._rest, b""
        lines = rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n") if rest else []
        if lines and lines[-1] == b"":
            lines.pop()  # the line ending of the last line, not an empty line of its own
        return self._events(lines)

    def _events(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return events


class ProviderError(Exception):
    """An error object the provider sent inside the stream instead of a chunk."""

    def __init__(self, error: Any) -> None:
        fields = error if isinstance(error, dict) else {}
        message = fields.get("message")
        super().__init__(message if isinstance(message, str) and message else "An error occurred during streaming")
        self.code = fields.get("code")


def read_chunk(data: bytes, outcome: Outcome) -> list[Piece]:
    """One chunk's pieces (index 0 only); records finish_reason and usage in `outcome`.

    A chunk that is not the expected shape raises orjson.JSONDecodeError, TypeError, KeyError or AttributeError.
    """
    chunk = orjson.loads(data)
    error = chunk.get("error")
    if error:
        raise ProviderError(error)
    usage = chunk.get("usage")
    if usage is not None:
        outcome.usage = _without_none(usage)
    pieces: list[Piece] = []
    for choice in chunk.get("choices") or ():
        if choice["index"] != 0:
            continue
        delta = choice.get("delta")
        if delta:
            # Reasoning models (DeepSeek, DashScope) add `reasoning_content` next to `content`.
            thinking = delta.get("reasoning_content")
            content = delta.get("content")
            # NUL is dropped: PostgreSQL text cannot hold it, and the stream, the done event's sha256 and the
            # stored record must all describe the same text.
            if thinking:
                pieces.append(Piece("reasoning", str(thinking).replace("\x00", "")))
            if content:
                pieces.append(Piece("content", content.replace("\x00", "")))
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            outcome.finish_reason = finish_reason
    return pieces


def _without_none(value: dict[str, Any]) -> dict[str, Any]:
    """The usage object as sent, minus null fields at any depth."""
    if not isinstance(value, dict):
        raise TypeError("usage is not an object")
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in value.items() if v is not None}
