"""Prometheus metrics of the API process, served at /metrics: streams open, resumes and what they replayed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from prometheus_client import Counter, Gauge

from shared.ids import parse_stream_id
from shared.metrics import FINISHED, REDIS_ERRORS, RESETS
from shared.streams import Entry

__all__ = [
    "FINISHED",
    "GENERATIONS_CREATED",
    "REDIS_ERRORS",
    "REPLAYED",
    "RESETS",
    "RESUMES",
    "SSE_BYTES",
    "SSE_CLIENTS",
    "TERMINAL_204",
    "count_replayed",
    "track_stream",
]

GENERATIONS_CREATED = Counter("sse_relay_generations_created_total", "Generations accepted by this API process")
SSE_CLIENTS = Gauge("sse_relay_sse_clients", "SSE responses currently streaming from this process")
SSE_BYTES = Counter("sse_relay_sse_bytes_total", "Bytes of SSE frames handed to clients")
RESUMES = Counter(
    "sse_relay_resumes_total",
    "Event requests that resumed: a Last-Event-ID (header or query), or the Responses API's starting_after",
)
REPLAYED = Counter(
    "sse_relay_replayed_events_total",
    "Events an event request sent that existed before it arrived: from the Redis stream, or rebuilt from the store",
    ["source"],
)
TERMINAL_204 = Counter(
    "sse_relay_terminal_204_total", "Resumes answered 204 because the client already had the terminal event"
)


async def track_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    SSE_CLIENTS.inc()
    try:
        async for frame in frames:
            SSE_BYTES.inc(len(frame))
            yield frame
    finally:
        SSE_CLIENTS.dec()


async def count_replayed(batches: AsyncIterator[list[Entry]]) -> AsyncIterator[list[Entry]]:
    """Counts the entries written before the request arrived (their stream id's milliseconds are Redis's
    clock, compared with this process's: replay stands out by seconds, a small skew does not matter; an entry
    of the very millisecond the body started counts as replayed). Ids are in order, so counting stops at the
    first live entry."""
    since_ms = int(time.time() * 1000)
    replaying = True
    async for batch in batches:
        if replaying:
            old = sum(1 for entry_id, _ in batch if _millis(entry_id) <= since_ms)
            if old:
                REPLAYED.labels("redis").inc(old)
            replaying = old == len(batch)
        yield batch


def _millis(entry_id: str) -> int:
    parsed = parse_stream_id(entry_id)
    return parsed[0] if parsed is not None else 0
