"""Every Redis key name sse-relay uses, built in one place; a generation's keys share a `{id}` hash tag."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GenerationKeys:
    """The keys of one generation; the `{id}` hash tag keeps them in one Redis Cluster slot for Lua."""

    events: str
    state: str


def generation_keys(prefix: str, generation_id: str) -> GenerationKeys:
    tag = f"{prefix}:gen:{{{generation_id}}}"
    return GenerationKeys(events=f"{tag}:events", state=f"{tag}:state")


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
