"""Queue and streams on two different plain Redis servers (REDIS_URL and STREAMS_REDIS_URL): generations run,
resume and cancel, their state lives only on the streams server and their jobs only on the queue server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.keys import generation_keys
from tests.support.redis_server import OwnRedis, own_redis
from tests.support.sse import EventReader, assert_well_formed, read_events, text_of
from tests.support.stack import Stack, running_stack

LONG = "".join(f"<{i:02d}>" for i in range(40))


@pytest.fixture(scope="module")
def split_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OwnRedis]]:
    workdir = tmp_path_factory.mktemp("split-redis")
    with (
        own_redis(workdir / "streams") as streams_server,
        running_stack(redis_url, workdir, STREAMS_REDIS_URL=streams_server.url) as stack,
    ):
        yield stack, streams_server


@pytest.fixture
async def split(
    split_stack: tuple[Stack, OwnRedis],
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient, Redis]]:
    stack, streams_server = split_stack
    streams = Redis.from_url(streams_server.url, decode_responses=True)
    async with stack.client() as client:
        yield stack, client, streams
    await streams.aclose()


async def test_a_generation_runs_and_resumes_with_queue_and_streams_apart(
    split: tuple[Stack, httpx.AsyncClient, Redis], redis: Redis
) -> None:
    stack, client, streams = split
    body = {"prompt": f"echo:{LONG}", "model": "demo@chunk=4,delay_ms=10"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        first = await read_events(response, limit=3)
    url = f"/v1/generations/{generation_id}/events"
    async with client.stream("GET", url, headers={"Last-Event-ID": first[-1].id}) as response:
        rest = await read_events(response)
    events = first + rest
    assert_well_formed(events)
    assert text_of(events) == LONG
    keys = generation_keys(stack.prefix, generation_id)
    assert await streams.exists(keys.state, keys.events) == 2
    assert await redis.exists(keys.state, keys.events) == 0
    # arq's job result is on the queue's server (written as the job returns), nothing of arq's on the streams one.
    deadline = time.monotonic() + 10
    while not await redis.exists(f"arq:result:{generation_id}"):
        assert time.monotonic() < deadline, "the job's result never reached the queue's Redis"
        await asyncio.sleep(0.05)
    assert [key async for key in streams.scan_iter("arq:*")] == []


async def test_cancel_with_queue_and_streams_apart(split: tuple[Stack, httpx.AsyncClient, Redis]) -> None:
    _, client, _ = split
    body = {"prompt": "echo:" + "y" * 300, "model": "demo@chunk=1,delay_ms=20"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        first = await reader.take(2)
        assert (await client.post(f"/v1/generations/{generation_id}/cancel")).status_code == 202
        rest = await reader.take()
    events = first + rest
    assert_well_formed(events)
    assert (events[-1].type, events[-1].data["code"]) == ("error", "cancelled")


@pytest.fixture(scope="module")
def own_queue_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OwnRedis]]:
    # Both servers of its own: the test takes the queue's away.
    workdir = tmp_path_factory.mktemp("split-own-queue")
    with (
        own_redis(workdir / "queue") as queue_server,
        own_redis(workdir / "streams") as streams_server,
        running_stack(queue_server.url, workdir, STREAMS_REDIS_URL=streams_server.url) as stack,
    ):
        yield stack, queue_server


async def test_a_retried_create_whose_first_enqueue_failed_still_runs(
    own_queue_stack: tuple[Stack, OwnRedis],
) -> None:
    """Apart, creating writes the state on the streams server, then the job on the queue's. With the queue away
    the first request writes the state and fails (503); its retry, with the same Idempotency-Key once the queue
    is back, attaches to that generation, which must then get its job and run, not wait for the reaper."""
    stack, queue_server = own_queue_stack
    body = {"prompt": "echo:after the outage", "background": True}
    headers = {"Idempotency-Key": "retry-after-queue-outage"}
    async with stack.client() as client:
        queue_server.kill()
        try:
            failed = await client.post("/v1/generations", json=body, headers=headers)
        finally:
            queue_server.start()
        assert failed.status_code == 503, failed.text
        retried = await _until_accepted(client, body, headers)
        # Without its job the generation would wait a minute for the reaper: far past this.
        async with asyncio.timeout(20), client.stream("GET", retried["events_url"]) as response:
            events = await read_events(response)
    assert_well_formed(events)
    assert (events[-1].type, text_of(events)) == ("done", "after the outage")


async def _until_accepted(
    client: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        response = await client.post("/v1/generations", json=body, headers=headers)
        if response.status_code in (200, 202):
            created: dict[str, Any] = response.json()
            return created
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)
