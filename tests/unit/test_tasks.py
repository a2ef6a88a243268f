"""Cancelling a task that loops on redis-py commands always ends it (redis-py can swallow one cancel)."""

from __future__ import annotations

import asyncio
import random

from shared.config import Settings
from shared.redis_client import streams_client
from shared.tasks import cancel_and_wait


async def test_cancel_and_wait_ends_tasks_cancelled_mid_command(redis_url: str) -> None:
    # The client the API and worker use: its socket timeout wraps each read in a timeout scope, which is
    # where a cancellation can be swallowed (redis-py #2551).
    redis = streams_client(Settings(redis_url=redis_url))

    async def poll_flag() -> None:
        while not await redis.hget("sse-relay-test:no-such-hash", "cancel"):  # type: ignore[misc]
            await asyncio.sleep(0.0005)

    rng = random.Random(7)
    for _ in range(300):
        task = asyncio.ensure_future(poll_flag())
        await asyncio.sleep(rng.random() * 0.003)
        # A plain task.cancel() left about 1 in 20 of these running forever (the worker's hang).
        await asyncio.wait_for(cancel_and_wait(task), 5)
        assert task.done()
    await redis.aclose()


async def test_cancel_and_wait_keeps_the_outcome_of_finished_tasks() -> None:
    async def fails() -> None:
        raise ValueError("kept")

    finished = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(finished)
    assert isinstance(finished.exception(), ValueError)
