"""Prometheus metrics of the API process, served at /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from prometheus_client import Counter, Gauge

GENERATIONS_CREATED = Counter("sse_relay_generations_created_total", "Generations accepted by this API process")
STREAMS_OPEN = Gauge("sse_relay_sse_streams_open", "SSE responses currently streaming from this process")
SSE_BYTES = Counter("sse_relay_sse_bytes_total", "Bytes of SSE frames handed to clients")


async def track_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    STREAMS_OPEN.inc()
    try:
        async for frame in frames:
            SSE_BYTES.inc(len(frame))
            yield frame
    finally:
        STREAMS_OPEN.dec()
