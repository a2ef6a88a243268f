"""Positive signals from the worker side: an arq job's end, for tests that then assert nothing more happened."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from shared.jobs import result_key


async def job_ended(redis_url: str, generation_id: str, timeout: float = 15.0) -> None:
    """Waits until the generation's arq job has finished (arq wrote its result; the job id is the generation id).

    After it, whatever that job was going to do (a provider call, a hook) has happened or never will.
    """
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while not await redis.exists(result_key(generation_id)):
            assert time.monotonic() < deadline, f"the job of {generation_id} did not end"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
