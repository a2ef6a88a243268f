"""Job pick-up without the polling delay: a worker with room blocks on the wake list and starts the job it names.

arq polls its queue every `poll_delay` (0.5 s): a job would wait 250 ms on average before it starts. The API
pushes each job's id to a wake list as it enqueues it (api/enqueue.py); one worker with room pops it (BLPOP)
and starts that job at once (worker/relay.py). A lost wake-up costs one poll interval, never a job: the job
is in arq's queue all along, and arq's polling stays as the fallback.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("sse_relay.worker")

_BLOCK_S = 5
# BLPOP's own timeout is on the server; a connection that silently died would hold it forever without this.
_GUARD_S = _BLOCK_S + 5.0
_RETRY_S = 1.0


class WakeList:
    """The consumer side of the wake list, on the queue's Redis."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key

    async def next(self) -> bytes | None:
        """-> the next woken job id, or None after a quiet block or a Redis error (logged, retried later)."""
        try:
            popped = await asyncio.wait_for(self.redis.blpop([self.key], timeout=_BLOCK_S), _GUARD_S)  # type: ignore[arg-type]
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("wake-up listener: %s; retrying", type(exc).__name__)
            await asyncio.sleep(_RETRY_S)
            return None
        return popped[1] if popped else None

    async def give_back(self, job_id: bytes) -> None:
        """A worker that stops picking up jobs hands its wake-up on: another worker starts the job at once."""
        try:
            await self.redis.lpush(self.key, job_id)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            log.warning("handing a wake-up on: %s; the job waits for a poll", type(exc).__name__)
