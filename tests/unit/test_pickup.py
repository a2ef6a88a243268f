"""The take scripts (worker/pickup.py) against a real Redis: a job is taken once, under a short lease, only when
due; a generation's job is claimed in the same step."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.lua import TAKE_AND_CLAIM, TAKE_JOB
from shared.state import Generations, parse_claim


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


async def test_a_generation_job_is_taken_and_claimed_in_one_step(redis: Redis, redis_url: str) -> None:
    generations = Generations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8]))
    generation_id = new_generation_id()
    request = StoredRequest(messages=[{"role": "user", "content": "hi"}], model="m")
    await generations.create(generation_id, request, {}, "anonymous")
    raw = Redis.from_url(redis_url)  # arq's pool answers bytes: the claim is parsed from bytes
    take = raw.register_script(TAKE_AND_CLAIM)
    queue = f"q-{uuid.uuid4().hex}"
    keys = generations.keys(generation_id)
    script_keys = [keys.events, keys.state, f"arq:in-progress:{generation_id}", queue]
    now = int(time.time() * 1000)
    await raw.zadd(queue, {generation_id: now})
    try:
        score, *reply = await take(keys=script_keys, args=[repr(time.time()), generation_id, now, 3000])
        claim = parse_claim(generation_id, reply)
        assert float(score) == now
        assert (claim.outcome, claim.attempt, claim.had_output) == ("ok", 1, False)
        assert claim.state is not None
        assert (claim.state.status, claim.state.request) == ("running", request)
        # Taken: a second take neither starts it again nor counts another attempt.
        assert await take(keys=script_keys, args=[repr(time.time()), generation_id, now, 3000]) is None
        state = await generations.get(generation_id)
        assert state is not None
        assert state.attempt == 1
    finally:
        await raw.delete(*script_keys)
        await raw.aclose()
