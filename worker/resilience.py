"""arq's poll loop made to ride out a Redis outage instead of ending the worker process (worker/relay.py).

arq's `Worker.main` lets any Redis error of a poll iteration escape, and the worker process exits. Its
generations in flight are alive and waiting for Redis (their writes retry): the loop must live too.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import WatchError

from shared.metrics import REDIS_ERRORS
from shared.retry import TRANSIENT

log = logging.getLogger("sse_relay.worker")

# redis-py reports a connection lost during a WATCH (arq's cron enqueue) as a WatchError.
POLL_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT, WatchError)

_FIRST_PAUSE_S = 0.1
_MAX_PAUSE_S = 2.0
_LOG_EVERY_S = 5.0


class Outage:
    """Back-off and log throttling for one worker's poll loop while Redis is away."""

    def __init__(self) -> None:
        self.pause_s = _FIRST_PAUSE_S
        self.since: float | None = None
        self.last_log = 0.0

    async def failed(self, exc: BaseException) -> None:
        REDIS_ERRORS.inc()
        now = time.monotonic()
        self.since = self.since or now
        if now - self.last_log >= _LOG_EVERY_S:
            waited = now - self.since
            log.warning("Redis unavailable for %.1f s (%s); the worker keeps polling", waited, type(exc).__name__)
            self.last_log = now
        await asyncio.sleep(self.pause_s)
        self.pause_s = min(self.pause_s * 2, _MAX_PAUSE_S)

    def answered(self) -> None:
        if self.since is not None:
            log.info("Redis is back after %.1f s", time.monotonic() - self.since)
        self.pause_s, self.since = _FIRST_PAUSE_S, None
