"""Durable results and worker hooks end to end: on_complete once, failures visible, results outlive Redis."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from shared.keys import generation_keys
from tests.support.jobs import job_ended
from tests.support.sse import Received, assert_well_formed, read_events, text_of
from tests.support.stack import Stack


async def _poll(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _lines(stack: Stack, name: str) -> list[str]:
    path = Path(stack.env["SSE_RELAY_TEST_HOOK_DIR"]) / name
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


async def _generate(client: httpx.AsyncClient, **body: Any) -> tuple[str, list[Received]]:
    async with client.stream("POST", "/v1/generations", json=body) as response:
        assert response.status_code == 200, await response.aread()
        return response.headers["x-generation-id"], await read_events(response)


async def _forget_in_redis(stack: Stack, generation_id: str) -> None:
    """What an expired TTL or a flushed Redis does to a finished generation."""
    redis = Redis.from_url(stack.env["REDIS_URL"])
    try:
        keys = generation_keys(stack.prefix, generation_id)
        assert await redis.delete(keys.events, keys.state) == 2
    finally:
        await redis.aclose()


async def test_on_complete_runs_once_with_the_final_text(client: httpx.AsyncClient, stack: Stack) -> None:
    generation_id, events = await _generate(client, prompt="echo:saved ✓", on_complete="record_completion")
    assert events[-1].type == "done"

    async def ran() -> list[str]:
        return [line for line in _lines(stack, "completions.log") if line.startswith(generation_id)]

    assert await _poll(ran, "on_complete") == [f"{generation_id} {len('saved ✓')} done 1"]

    async def hook_ok() -> dict[str, Any] | None:
        hook: dict[str, Any] = (await client.get(f"/v1/generations/{generation_id}")).json()["on_complete"]
        return hook if hook["status"] == "ok" else None

    assert await _poll(hook_ok, "on_complete's outcome") == {
        "name": "record_completion", "status": "ok", "attempts": 1, "error": None
    }  # fmt: skip
    await job_ended(stack.env["REDIS_URL"], generation_id)  # the job runs the hook: no second run can follow
    assert len(await ran()) == 1


async def test_on_complete_does_not_run_for_a_failed_generation(client: httpx.AsyncClient, stack: Stack) -> None:
    generation_id, events = await _generate(
        client, prompt="echo:x", model="status-400", on_complete="record_completion"
    )
    assert events[-1].data["code"] == "upstream_bad_request"
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert view["status"] == "error"
    assert view["on_complete"]["status"] == "none"
    assert not [line for line in _lines(stack, "completions.log") if line.startswith(generation_id)]


async def test_on_content_sees_every_piece(client: httpx.AsyncClient, stack: Stack) -> None:
    text = "piece-by-piece 片段 " * 3
    _, events = await _generate(
        client, prompt=f"echo:{text}", model="demo@chunk=5,delay_ms=0", on_content="record_chunk"
    )
    assert text_of(events) == text
    assert text in "".join(_lines(stack, "chunks.log"))


async def test_failing_hook_keeps_the_generation_done_and_shows_the_failure(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    generation_id, events = await _generate(client, prompt="echo:fine", on_complete="always_fails")
    assert_well_formed(events)
    assert events[-1].type == "done"
    attempts = int(stack.env["HOOK_MAX_ATTEMPTS"])

    async def failed() -> dict[str, Any] | None:
        hook: dict[str, Any] = (await client.get(f"/v1/generations/{generation_id}")).json()["on_complete"]
        return hook if hook["status"] == "failed" and hook["attempts"] == attempts else None

    hook = await _poll(failed, "the hook's retries to run out")
    assert hook["error"] == "RuntimeError"
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert view["status"] == "done" and view["text"] == "fine"
    assert _lines(stack, "failures.log").count(generation_id) == attempts


async def test_finished_generation_is_served_from_the_store_after_redis_forgets_it(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    text = "kept for later — 保存 🌍"
    generation_id, live = await _generate(client, prompt=f"echo:{text}", metadata={"story": 7}, model="demo@chunk=3")
    done_id = live[-1].id
    before = (await client.get(f"/v1/generations/{generation_id}")).json()
    await _forget_in_redis(stack, generation_id)

    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert view == before
    assert (view["status"], view["text"], view["metadata"]) == ("done", text, {"story": 7})

    url = f"/v1/generations/{generation_id}/events"
    async with client.stream("GET", url) as response:
        replay = await read_events(response)
    assert [e.type for e in replay] == ["content", "done"]
    assert_well_formed(replay)
    assert text_of(replay) == text
    assert replay[-1].id == done_id
    assert replay[-1].data == live[-1].data
    assert (await client.get(url, headers={"Last-Event-ID": done_id})).status_code == 204

    # A client that saw part of the text resumes: it is told to start over, then gets all of it.
    async with client.stream("GET", url, headers={"Last-Event-ID": live[1].id}) as response:
        resumed = await read_events(response)
    assert [e.type for e in resumed] == ["reset", "content", "done"]
    assert text_of(live[:2] + resumed) == text

    cancel = await client.post(f"/v1/generations/{generation_id}/cancel")
    assert (cancel.status_code, cancel.json()["status"]) == (200, "done")


async def test_failed_generation_is_served_from_the_store_with_its_error(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    generation_id, live = await _generate(client, prompt="echo:abcdefgh", model="cut@after=1,chunk=4")
    await _forget_in_redis(stack, generation_id)
    async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
        replay = await read_events(response)
    assert [e.type for e in replay] == ["content", "error"]
    assert replay[-1].data == live[-1].data and replay[-1].id == live[-1].id
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert (view["status"], view["text"], view["error"]["code"]) == ("error", "abcd", "upstream_unavailable")


async def test_unknown_generation_is_still_404_with_a_store(client: httpx.AsyncClient) -> None:
    missing = "gen_" + "f" * 32
    assert (await client.get(f"/v1/generations/{missing}")).status_code == 404
    assert (await client.get(f"/v1/generations/{missing}/events")).status_code == 404


async def test_idempotency_key_attaches_to_the_same_generation(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": f"order-{time.time_ns()}"}
    body = {"prompt": "echo:only once", "background": True}
    first = await client.post("/v1/generations", json=body, headers=headers)
    second = await client.post("/v1/generations", json=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    # Live, with the same key: the same generation's stream, from the start.
    async with client.stream("POST", "/v1/generations", json={**body, "background": False}, headers=headers) as r:
        assert r.headers["x-generation-id"] == first.json()["id"]
        assert text_of(await read_events(r)) == "only once"
    other = await client.post("/v1/generations", json={**body, "prompt": "echo:else"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"


async def test_concurrent_requests_with_one_key_start_one_generation(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": f"race-{time.time_ns()}"}
    body = {"prompt": "echo:race", "background": True}
    answers = await asyncio.gather(*(client.post("/v1/generations", json=body, headers=headers) for _ in range(8)))
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202]


async def test_cancelled_while_queued_is_recorded_in_the_store(client: httpx.AsyncClient, stack: Stack) -> None:
    from shared.config import Settings
    from shared.jobs import StoredRequest
    from shared.redis_client import streams_client
    from shared.state import Generations

    settings = Settings(redis_url=stack.env["REDIS_URL"], key_prefix=stack.prefix)
    redis = streams_client(settings)
    generation_id = "gen_" + "d" * 20 + f"{time.time_ns():x}"[-12:]
    try:
        request = StoredRequest(messages=[{"role": "user", "content": "echo:never"}], model="demo")
        await Generations(redis, settings).create(generation_id, request, {"k": 1}, "anonymous")
        assert (await client.post(f"/v1/generations/{generation_id}/cancel")).json()["status"] == "cancelled"
    finally:
        await redis.aclose()
    await _forget_in_redis(stack, generation_id)
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert (view["status"], view["error"]["code"], view["metadata"]) == ("cancelled", "cancelled", {"k": 1})


async def test_a_hanging_on_content_does_not_hold_up_another_generation(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    # As many hanging hooks as the event loop's default executor has threads: all of them, had hooks run there.
    hanging = min(32, (os.cpu_count() or 1) + 4)
    tag = uuid.uuid4().hex[:12]
    body = {"model": "demo@chunk=64", "on_content": "blocking_chunk", "background": True}
    for index in range(hanging):
        created = await client.post("/v1/generations", json={**body, "prompt": f"echo:{tag}-{index}"})
        assert created.status_code == 202
    try:

        async def all_hanging() -> bool:
            return len([line for line in _lines(stack, "blocked.log") if line.startswith(tag)]) >= hanging

        await _poll(all_hanging, "every hanging hook to start", timeout=30)
        fast = f"not held up {tag}"
        _, events = await asyncio.wait_for(
            _generate(client, prompt=f"echo:{fast}", model="demo@chunk=64", on_content="record_chunk"), 15
        )
        assert events[-1].type == "done"
        assert fast in _lines(stack, "chunks.log")
    finally:
        (Path(stack.env["SSE_RELAY_TEST_HOOK_DIR"]) / f"release-{tag}").touch()
