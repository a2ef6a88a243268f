"""The per-process stream reader: every subscriber gets exactly the entries after its resume point, in order,
whenever it joins, with one Redis connection per shard (real Redis)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from api.stream_hub import StreamHub
from shared import events
from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.state import Generations
from shared.streams import Entry, read_range


@pytest.fixture
async def hub_setup(redis_url: str) -> AsyncIterator[tuple[StreamHub, Generations, Redis]]:
    # A long BLOCK: a subscriber that had to wait for it to time out would hit the test's own deadline.
    settings = Settings(redis_url=redis_url, key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=30_000)
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = StreamHub(settings, streams, shards=2)
    hub.start()
    try:
        yield hub, Generations(streams, settings), streams
    finally:
        await hub.stop()
        await streams.aclose()


async def _running(generations: Generations) -> tuple[str, int]:
    generation_id = new_generation_id()
    request = StoredRequest(messages=[{"role": "user", "content": "x"}], model="m")
    await generations.create(generation_id, request, {}, "anonymous")
    return generation_id, (await generations.claim(generation_id)).attempt


async def _collect(hub: StreamHub, generations: Generations, generation_id: str, after: str) -> list[Entry]:
    received: list[Entry] = []
    async for batch in hub.follow(generations.keys(generation_id), after):
        received += batch
    return received


async def test_subscriber_gets_backlog_then_live_entries_until_terminal(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, redis = hub_setup
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")])
    reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
    await asyncio.sleep(0.05)
    await generations.publish(generation_id, attempt, [events.content("c")])
    await generations.publish(generation_id, attempt, [events.done("abc", "stop", None)], "done")
    received = await asyncio.wait_for(reader, 5)
    assert received == await read_range(redis, generations.keys(generation_id).events)


async def test_subscribers_joining_at_random_moments_see_no_gap_and_no_duplicate(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, redis = hub_setup
    generation_id, attempt = await _running(generations)
    rng = random.Random(11)
    published: list[str] = []
    readers: list[tuple[str, asyncio.Task[list[Entry]]]] = []

    for index in range(120):
        result = await generations.publish(generation_id, attempt, [events.content(f"p{index}")])
        published.append(result.last_id)
        if index % 10 == 3:
            # Join from the start, from a random point already passed, or from the newest entry.
            after = rng.choice(["0-0", rng.choice(published), published[-1]])
            readers.append((after, asyncio.ensure_future(_collect(hub, generations, generation_id, after))))
        await asyncio.sleep(rng.random() * 0.004)
    await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")

    everything = await read_range(redis, generations.keys(generation_id).events)
    for after, task in readers:
        received = await asyncio.wait_for(task, 10)
        expected = [entry for entry in everything if _after(entry[0], after)]
        assert received == expected, f"subscriber from {after}"


async def test_a_new_key_is_read_at_once_while_the_reader_blocks_on_others(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, _ = hub_setup
    # Keep every shard's reader blocked (30 s) on a quiet generation.
    quiet_id, _ = await _running(generations)
    quiet = [asyncio.ensure_future(_collect(hub, generations, quiet_id, "0-0"))]
    await asyncio.sleep(0.1)
    for _ in range(4):
        generation_id, attempt = await _running(generations)
        reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
        await asyncio.sleep(0.02)
        await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")
        assert len(await asyncio.wait_for(reader, 5)) == 1
    for task in quiet:
        task.cancel()


async def test_follow_ends_when_the_generation_expires(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=200)
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = StreamHub(settings, streams, shards=1)
    hub.start()
    try:
        generations = Generations(streams, settings)
        generation_id, _ = await _running(generations)
        reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
        await asyncio.sleep(0.1)
        await streams.delete(generations.keys(generation_id).state)
        assert await asyncio.wait_for(reader, 5) == []
    finally:
        await hub.stop()
        await streams.aclose()


def _after(entry_id: str, after: str) -> bool:
    a = tuple(int(p) for p in entry_id.split("-"))
    b = tuple(int(p) for p in after.split("-"))
    return a > b
