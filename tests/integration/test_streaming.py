"""The live path end to end: POST -> queue -> worker -> Redis stream -> SSE, exact text and well-formed events."""

from __future__ import annotations

import hashlib

import httpx

from demo.model import answer_for
from tests.support.sse import assert_well_formed, read_events, text_of
from tests.support.stack import Stack

MULTIBYTE = "Grüße, 世界! 🌍🚀 naïve — ∑∞ ok. " * 3


async def test_post_streams_the_exact_text_including_multibyte_characters(client: httpx.AsyncClient) -> None:
    body = {"prompt": f"echo:{MULTIBYTE}", "model": "demo@chunk=3,delay_ms=0"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        generation_id = response.headers["x-generation-id"]
        assert response.headers["location"] == f"/v1/generations/{generation_id}"
        events = await read_events(response)
    assert_well_formed(events)
    assert text_of(events) == MULTIBYTE
    done = events[-1].data
    assert done["type"] == "done"
    assert done["data"]["finish_reason"] == "stop"
    assert done["data"]["length"] == len(MULTIBYTE)
    assert done["data"]["sha256"] == hashlib.sha256(MULTIBYTE.encode()).hexdigest()
    assert done["data"]["usage"]["completion_tokens"] > 0


async def test_default_model_answers_with_the_demo_text(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/generations", json={"prompt": "Hello", "system": "Be brief"}) as response:
        events = await read_events(response)
    assert_well_formed(events)
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]
    assert text_of(events) == answer_for(messages)


async def test_reasoning_arrives_as_reasoning_events_before_content(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/generations", json={"prompt": "echo:42", "model": "reasoning"}) as response:
        events = await read_events(response)
    assert_well_formed(events)
    kinds = [e.type for e in events]
    assert "reasoning" in kinds and kinds.index("reasoning") < kinds.index("content")
    reasoning = "".join(e.data["data"] for e in events if e.type == "reasoning")
    assert reasoning == "Let me think about this. " * 2
    assert text_of(events) == "42"


async def test_background_generation_is_fetchable_with_status_and_metadata(client: httpx.AsyncClient) -> None:
    body = {"prompt": "echo:background ✓", "background": True, "metadata": {"user": "u1", "n": 3}}
    created = await client.post("/v1/generations", json=body)
    assert created.status_code == 202
    info = created.json()
    assert info["status"] == "queued"
    assert info["url"] == f"/v1/generations/{info['id']}"
    assert created.headers["location"] == info["url"]
    async with client.stream("GET", info["events_url"]) as response:
        events = await read_events(response)
    assert_well_formed(events)
    view = (await client.get(info["url"])).json()
    assert view["status"] == "done"
    assert view["text"] == "background ✓"
    assert view["metadata"] == {"user": "u1", "n": 3}
    assert view["finish_reason"] == "stop"
    assert view["usage"]["total_tokens"] > 0
    assert view["error"] is None
    assert view["created_at"] <= view["started_at"] <= view["finished_at"]


async def test_prefer_respond_async_header_runs_in_background(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/generations", json={"prompt": "echo:x"}, headers={"Prefer": "respond-async, wait=0"}
    )
    assert response.status_code == 202
    assert response.json()["id"].startswith("gen_")


async def test_messages_and_provider_parameters_reach_the_provider(client: httpx.AsyncClient) -> None:
    body = {
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "echo:abcdefghij"}],
        "model": "demo@chunk=2,delay_ms=0",
        "max_tokens": 2,
        "temperature": 0.2,
    }
    async with client.stream("POST", "/v1/generations", json=body) as response:
        events = await read_events(response)
    assert_well_formed(events)
    # The fake stops after max_tokens chunks with finish_reason "length": the parameter was passed through.
    assert text_of(events) == "abcd"
    assert events[-1].data["data"]["finish_reason"] == "length"


async def test_many_clients_watch_one_generation_and_see_the_same_events(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    created = (await client.post("/v1/generations", json={"prompt": "echo:" + "z" * 40, "model": "demo@delay_ms=20",
                                                          "background": True})).json()  # fmt: skip

    async def watch() -> list[str]:
        async with stack.client() as own, own.stream("GET", created["events_url"]) as response:
            return [f"{e.id}:{e.type}" for e in await read_events(response)]

    import asyncio

    seen = await asyncio.gather(*(watch() for _ in range(5)))
    assert all(s == seen[0] for s in seen)
    assert seen[0][-1].endswith(":done")


async def test_each_generation_sends_one_provider_request(
    client: httpx.AsyncClient, upstream: httpx.AsyncClient
) -> None:
    # The worker sends the request when it takes the job (worker/early.py); the generation must read that one,
    # not send its own as well.
    assert (await upstream.post("/_fake/reset")).status_code == 200
    for index in range(3):
        async with client.stream("POST", "/v1/generations", json={"prompt": f"echo:once {index}"}) as response:
            assert text_of(await read_events(response)) == f"once {index}"
    assert (await upstream.get("/_fake/stats")).json()["requests"] == 3
