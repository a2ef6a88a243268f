"""worker.pickup's TAKE_JOB script against a real Redis: a job is taken once, under a short lease, only when due."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from worker.pickup import TAKE_JOB


async def test_a_due_job_is_taken_once_under_the_lease(redis: Redis) -> None:
    take = redis.register_script(TAKE_JOB)
    queue, job_id = f"q-{uuid.uuid4().hex}", uuid.uuid4().hex
    keys = [f"arq:in-progress:{job_id}", queue]
    now = int(time.time() * 1000)
    await redis.zadd(queue, {job_id: now - 5})
    try:
        assert float(await take(keys=keys, args=[job_id, now, 3000])) == now - 5
        assert 0 < await redis.pttl(keys[0]) <= 3000
        # Taken: another worker (or this one, again) gets nothing.
        assert await take(keys=keys, args=[job_id, now, 3000]) is None
    finally:
        await redis.delete(*keys)


async def test_a_deferred_or_finished_job_is_not_taken(redis: Redis) -> None:
    take = redis.register_script(TAKE_JOB)
    queue, job_id = f"q-{uuid.uuid4().hex}", uuid.uuid4().hex
    keys = [f"arq:in-progress:{job_id}", queue]
    now = int(time.time() * 1000)
    try:
        assert await take(keys=keys, args=[job_id, now, 3000]) is None  # not queued (finished)
        await redis.zadd(queue, {job_id: now + 60_000})
        assert await take(keys=keys, args=[job_id, now, 3000]) is None  # deferred (a Retry)
        assert await redis.exists(keys[0]) == 0
    finally:
        await redis.delete(*keys)
