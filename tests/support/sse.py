"""A test client's view of an SSE response: parsed events with ids, via httpx-sse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource

from shared.ids import parse_stream_id


@dataclass(frozen=True)
class Received:
    id: str
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data["type"])


class EventReader:
    """Reads one streaming response in several steps (some events, then act, then the rest)."""

    def __init__(self, response: httpx.Response) -> None:
        self._events = EventSource(response).aiter_sse()

    async def take(self, limit: int | None = None) -> list[Received]:
        received: list[Received] = []
        async for sse in self._events:
            if not sse.data:
                continue  # a `: ping` comment: the SSE spec dispatches no event for an empty data buffer
            received.append(Received(sse.id, json.loads(sse.data)))
            if limit is not None and len(received) >= limit:
                break
        return received


async def read_events(response: httpx.Response, limit: int | None = None) -> list[Received]:
    """Events of a streaming response, until it ends or `limit` events were read."""
    return await EventReader(response).take(limit)


def text_of(events: list[Received]) -> str:
    """What a client shows: `content` after the last `reset`."""
    text: list[str] = []
    for event in events:
        if event.type == "reset":
            text.clear()
        elif event.type == "content":
            text.append(event.data["data"])
    return "".join(text)


def assert_well_formed(events: list[Received]) -> None:
    """The stream's contract: ids strictly increase; exactly one terminal event, and it is the last."""
    parsed = [parse_stream_id(e.id) for e in events]
    ids = [i for i in parsed if i is not None]
    assert len(ids) == len(parsed), f"every event needs a stream id: {[e.id for e in events]}"
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids must strictly increase"
    terminals = [e for e in events if e.type in ("done", "error")]
    assert len(terminals) == 1, f"expected exactly one terminal event, got {[e.type for e in events]}"
    assert events[-1].type in ("done", "error")
