"""Every Redis key name sse-relay uses, built in one place; a generation's keys share a bucket's hash tag."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# A generation's keys carry the hash tag of one of this many buckets (chosen by its id), so on a Redis Cluster
# they sit in one slot (its Lua scripts touch both), and all generations of a bucket share that slot: one
# blocking XREAD can follow many of them at once, which a cluster refuses across slots (CROSSSLOT, even on one
# node). An API process then needs at most this many stream readers on a cluster, and the streams spread over
# as many slots (so over up to this many masters).
GENERATION_BUCKETS = 16


@dataclass(frozen=True, slots=True)
class GenerationKeys:
    """The keys of one generation; their hash tag keeps them in one Redis Cluster slot for Lua."""

    events: str
    state: str
    # The bucket's doorbell: a stream naming each events stream as it is written (shared/lua.py), so that an
    # API's reader reads only the streams that moved (api/stream_hub.py). Same hash tag.
    bell: str
    bucket: int


def generation_keys(prefix: str, generation_id: str) -> GenerationKeys:
    bucket = zlib.crc32(generation_id.encode()) % GENERATION_BUCKETS
    tag = f"{{{prefix}:{bucket:02d}}}"
    base = f"{prefix}:gen:{tag}:{generation_id}"
    return GenerationKeys(events=f"{base}:events", state=f"{base}:state", bell=f"{prefix}:bell:{tag}", bucket=bucket)


def worker_health_key(prefix: str) -> str:
    return f"{prefix}:worker-health"


def idempotency_key(prefix: str, caller: str, digest: str) -> str:
    """Scoped per caller: two callers using the same Idempotency-Key never share a generation."""
    return f"{prefix}:idem:{caller}:{digest}"


def active_key(prefix: str, caller: str) -> str:
    """A caller's unfinished generations (ZSET id -> deadline), for the concurrency limit."""
    return f"{prefix}:active:{caller}"


def wake_key(prefix: str) -> str:
    """A list workers block on (BLPOP): one push per enqueued job wakes one idle worker at once."""
    return f"{prefix}:wake"
