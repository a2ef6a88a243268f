"""Riding out a Redis outage: the worker's writes wait for Redis to come back instead of failing the job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import AskError, ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.metrics import REDIS_ERRORS

log = logging.getLogger("sse_relay.redis")
T = TypeVar("T")

# Errors that mean "Redis is away (down, restarting, loading its data)", not "this command is wrong".
# BusyLoadingError (a restarted Redis replaying its AOF) is a ConnectionError in redis-py.
# On a cluster, a reshard or failover in progress: CLUSTERDOWN, TRYAGAIN (a multi-key script whose keys are
# half migrated), no node for a slot, and redis-py's "TTL exhausted" after redirects that do not settle. That
# last one happens while a slot is MIGRATING: redis-py's asyncio cluster client sends ASKING and the command on
# two different pooled connections, so the importing node answers MOVED back; once the slot is handed over the
# MOVED reply is final and the write goes through (tests/integration/test_cluster_stack.py).
TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    AskError,
    SlotNotCoveredError,
)

_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0
_LOG_EVERY_S = 5.0


async def until_redis_answers(operation: Callable[[], Awaitable[T]], what: str) -> T:
    """Run `operation` until it gets through, backing off while Redis is unreachable.

    Only for operations that are safe to repeat (the publish script drops a repeated write by its sequence
    number). Unbounded on purpose: the job's own timeout, or a cancel, ends the wait.
    """
    delay = _FIRST_DELAY_S
    failing_since: float | None = None
    last_log = 0.0
    while True:
        try:
            result = await operation()
        except TRANSIENT as exc:
            REDIS_ERRORS.inc()
            now = time.monotonic()
            failing_since = failing_since or now
            if now - last_log >= _LOG_EVERY_S:
                waited = now - failing_since
                log.warning("%s: Redis unavailable (%s) for %.1f s; retrying", what, type(exc).__name__, waited)
                last_log = now
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
            continue
        if failing_since is not None:
            log.info("%s: Redis is back after %.1f s", what, time.monotonic() - failing_since)
        return result
