"""The running job's lease: arq's in-progress key shortened to JOB_LEASE_S and renewed while the job runs.

arq keeps that key for the job timeout + 10 s, so a SIGKILLed worker's job would wait that long before another
worker retries it. With a short renewed lease, another worker takes over seconds after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.tasks import cancel_and_wait

log = logging.getLogger("sse_relay.worker")


@contextlib.asynccontextmanager
async def held_lease(redis: Redis, job_id: str, lease_s: float) -> AsyncIterator[None]:
    key = in_progress_key_prefix + job_id
    lease_ms = int(lease_s * 1000)

    async def renew() -> None:
        while True:
            try:
                await redis.pexpire(key, lease_ms)
            except RedisError as exc:  # keep trying: the job itself decides whether Redis is gone
                log.warning("lease renewal for %s failed: %s", job_id, type(exc).__name__)
            await asyncio.sleep(lease_s / 3)

    task = asyncio.ensure_future(renew())
    try:
        yield
    finally:
        await cancel_and_wait(task)
