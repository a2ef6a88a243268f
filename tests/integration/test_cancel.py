"""Cancelling: a running generation stops with one `cancelled` error and its upstream request is closed."""

from __future__ import annotations

import asyncio
import time

import httpx

from shared.config import Settings
from shared.jobs import StoredRequest
from shared.redis_client import streams_client
from shared.state import Generations
from tests.support.jobs import job_ended
from tests.support.metrics import scrape, value
from tests.support.sse import EventReader, assert_well_formed, read_events
from tests.support.stack import Stack


async def _stats(upstream: httpx.AsyncClient) -> dict[str, int]:
    stats: dict[str, int] = (await upstream.get("/_fake/stats")).json()
    return stats


async def test_cancel_running_generation_ends_stream_and_closes_upstream(
    client: httpx.AsyncClient, upstream: httpx.AsyncClient
) -> None:
    before = await _stats(upstream)
    body = {"prompt": "echo:" + "x" * 400, "model": "demo@chunk=1,delay_ms=20"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        first = await reader.take(3)
        cancel = await client.post(f"/v1/generations/{generation_id}/cancel")
        assert cancel.status_code == 202
        assert cancel.json() == {"id": generation_id, "status": "running"}
        rest = await reader.take()
    events = first + rest
    assert_well_formed(events)
    assert events[-1].data["type"] == "error"
    assert events[-1].data["code"] == "cancelled"
    assert len("".join(e.data["data"] for e in events if e.type == "content")) < 400

    deadline = time.monotonic() + 5
    while (await _stats(upstream))["client_disconnects"] <= before["client_disconnects"]:
        assert time.monotonic() < deadline, "the upstream request was not closed"
        await asyncio.sleep(0.05)
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert view["status"] == "cancelled"
    assert view["error"]["code"] == "cancelled"


async def test_cancel_reaches_a_generation_whose_provider_is_silent(client: httpx.AsyncClient) -> None:
    # The provider goes silent after one chunk for far longer than the 1.5 s idle timeout. Only the worker's
    # cancel poll can end it as `cancelled`; without it the generation would end `upstream_timeout`.
    body = {"prompt": "echo:abcdefgh", "model": "stall@stall_s=30,after=1", "background": True}
    created = (await client.post("/v1/generations", json=body)).json()
    async with client.stream("GET", created["events_url"]) as response:
        reader = EventReader(response)
        assert [e.type for e in await reader.take(1)] == ["content"]
        assert (await client.post(f"/v1/generations/{created['id']}/cancel")).status_code == 202
        rest = await reader.take()
    assert rest[-1].data["code"] == "cancelled"


async def test_cancel_after_finish_is_an_idempotent_200(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/generations", json={"prompt": "echo:done"}) as response:
        await read_events(response)
        generation_id = response.headers["x-generation-id"]
    for _ in range(2):
        again = await client.post(f"/v1/generations/{generation_id}/cancel")
        assert again.status_code == 200
        assert again.json() == {"id": generation_id, "status": "done"}
    async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
        events = await read_events(response)
    assert_well_formed(events)
    assert events[-1].type == "done"


async def test_cancel_while_queued_never_calls_the_provider(
    client: httpx.AsyncClient, upstream: httpx.AsyncClient, stack: Stack
) -> None:
    # A generation whose job has not been picked up yet: created in Redis, enqueued only after the cancel.
    settings = Settings(redis_url=stack.env["REDIS_URL"], key_prefix=stack.prefix)
    redis = streams_client(settings)
    generations = Generations(redis, settings)
    generation_id = "gen_" + "c" * 24 + str(int(time.time() * 1000))[-8:]
    request = StoredRequest(messages=[{"role": "user", "content": "echo:never"}], model="demo")
    await generations.create(generation_id, request, {}, "anonymous")
    finished = {"status": "cancelled", "code": "cancelled"}
    counted = value(scrape(f"{stack.api_url}/metrics"), "sse_relay_generations_finished_total", **finished)
    try:
        cancel = await client.post(f"/v1/generations/{generation_id}/cancel")
        assert cancel.status_code == 202
        assert cancel.json()["status"] == "cancelled"
        # No worker ends it: the API counts the ending it wrote.
        now = value(scrape(f"{stack.api_url}/metrics"), "sse_relay_generations_finished_total", **finished)
        assert now == counted + 1
        requests_before = (await _stats(upstream))["requests"]

        from arq.connections import RedisSettings, create_pool

        queue = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
        await queue.enqueue_job("run_generation", generation_id, _job_id=generation_id,
                                _queue_name=stack.env["SSE_RELAY_QUEUE_NAME"])  # fmt: skip
        await queue.aclose()
        async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
            events = await read_events(response)
        assert [e.type for e in events] == ["error"]
        assert events[0].data["code"] == "cancelled"
        await job_ended(stack.env["REDIS_URL"], generation_id)  # whatever it was going to do, it has done
        assert (await _stats(upstream))["requests"] == requests_before
        assert (await client.get(f"/v1/generations/{generation_id}")).json()["status"] == "cancelled"
    finally:
        await redis.aclose()


async def test_cancel_while_its_worker_was_dead_never_calls_the_provider_again(
    client: httpx.AsyncClient, upstream: httpx.AsyncClient, stack: Stack
) -> None:
    # Attempt 1 was claimed by a worker that died; the caller cancelled meanwhile (only the flag could be set).
    settings = Settings(redis_url=stack.env["REDIS_URL"], key_prefix=stack.prefix)
    redis = streams_client(settings)
    generations = Generations(redis, settings)
    generation_id = "gen_" + "e" * 24 + str(int(time.time() * 1000))[-8:]
    request = StoredRequest(messages=[{"role": "user", "content": "echo:never again"}], model="demo")
    await generations.create(generation_id, request, {}, "anonymous")
    try:
        assert (await generations.claim(generation_id)).attempt == 1
        cancel = await client.post(f"/v1/generations/{generation_id}/cancel")
        assert (cancel.status_code, cancel.json()["status"]) == (202, "running")
        requests_before = (await _stats(upstream))["requests"]

        from arq.connections import RedisSettings, create_pool

        queue = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
        await queue.enqueue_job("run_generation", generation_id, _job_id=generation_id,
                                _queue_name=stack.env["SSE_RELAY_QUEUE_NAME"])  # fmt: skip
        await queue.aclose()
        async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
            events = await read_events(response)
        assert [(e.type, e.data.get("code")) for e in events] == [("error", "cancelled")]
        await job_ended(stack.env["REDIS_URL"], generation_id)
        assert (await _stats(upstream))["requests"] == requests_before
        view = (await client.get(f"/v1/generations/{generation_id}")).json()
        assert (view["status"], view["error"]["code"]) == ("cancelled", "cancelled")
    finally:
        await redis.aclose()
