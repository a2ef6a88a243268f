"""Callers who must not see each other's streams: bearer keys, read tokens, per-caller scoping and limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.sse import read_events, text_of
from tests.support.stack import Stack, running_stack

ALICE, BOB = "alice-key-5b8e1c", "bob-key-94d0aa"


@pytest.fixture(scope="module")
def secure_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    limits = {
        "MAX_PROMPT_CHARS": "1000",
        "MAX_MESSAGES": "3",
        "MAX_TOKENS_LIMIT": "100",
        "MAX_CONCURRENT_PER_CALLER": "2",
    }
    with running_stack(
        redis_url, tmp_path_factory.mktemp("secure-stack"), SSE_RELAY_API_KEYS=f"{ALICE}, {BOB}", **limits
    ) as stack:
        yield stack


@pytest.fixture
async def alice(secure_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with secure_stack.client(headers={"Authorization": f"Bearer {ALICE}"}) as client:
        yield client


@pytest.fixture
async def bob(secure_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with secure_stack.client(headers={"Authorization": f"Bearer {BOB}"}) as client:
        yield client


@pytest.fixture
async def nobody(secure_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with secure_stack.client() as client:
        yield client


async def _background(client: httpx.AsyncClient, **extra: object) -> dict[str, str]:
    response = await client.post("/v1/generations", json={"prompt": "echo:for alice", "background": True, **extra})
    assert response.status_code == 202, response.text
    created: dict[str, str] = response.json()
    return created


async def test_creating_needs_a_valid_bearer_key(nobody: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ALICE}"}):
        response = await nobody.post("/v1/generations", json={"prompt": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_another_caller_cannot_read_cancel_or_attach(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    created = await _background(alice)
    path = f"/v1/generations/{created['id']}"
    for method, url in (("GET", path), ("GET", f"{path}/events"), ("POST", f"{path}/cancel")):
        response = await bob.request(method, url)
        assert response.status_code == 404, (method, url)  # indistinguishable from an unknown id
    assert (await alice.get(path)).status_code == 200


async def test_read_token_lets_an_eventsource_read_without_headers(
    alice: httpx.AsyncClient, nobody: httpx.AsyncClient
) -> None:
    created = await _background(alice)
    assert created["token"] and f"token={created['token']}" in created["events_url"]
    async with nobody.stream("GET", created["events_url"]) as response:
        assert response.status_code == 200
        assert text_of(await read_events(response)) == "for alice"
    status = await nobody.get(f"/v1/generations/{created['id']}", params={"token": created["token"]})
    assert status.json()["text"] == "for alice"
    # The token reads; it does not cancel, and it opens no other generation.
    cancel = await nobody.post(f"/v1/generations/{created['id']}/cancel", params={"token": created["token"]})
    assert cancel.status_code == 401
    other = await _background(alice)
    wrong = await nobody.get(f"/v1/generations/{other['id']}", params={"token": created["token"]})
    assert wrong.status_code == 404
    assert (await nobody.get(f"/v1/generations/{created['id']}")).status_code == 401


async def test_live_stream_returns_its_read_token_in_a_header(
    alice: httpx.AsyncClient, nobody: httpx.AsyncClient
) -> None:
    async with alice.stream("POST", "/v1/generations", json={"prompt": "echo:live"}) as response:
        token = response.headers["x-generation-token"]
        generation_id = response.headers["x-generation-id"]
        await read_events(response)
    replay = await nobody.get(f"/v1/generations/{generation_id}/events", params={"token": token})
    assert replay.status_code == 200 and '"type":"done"' in replay.text


async def test_idempotency_keys_are_scoped_per_caller(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": f"shared-{time.time_ns()}"}
    body = {"prompt": "echo:mine", "background": True}
    first = await alice.post("/v1/generations", json=body, headers=headers)
    second = await bob.post("/v1/generations", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "x" * 1001}, 413, "prompt_too_large"),
        ({"messages": [{"role": "user", "content": "x"}] * 4}, 422, "too_many_messages"),
        ({"prompt": "x", "max_tokens": 101}, 422, "max_tokens_too_large"),
    ],
)
async def test_request_limits_get_clear_errors(
    alice: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    response = await alice.post("/v1/generations", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


async def test_concurrent_generations_are_limited_per_caller(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    slow = {"prompt": "echo:" + "s" * 30, "model": "demo@chunk=1,delay_ms=50"}
    running = [await _background(alice, **slow) for _ in range(2)]
    refused = await alice.post("/v1/generations", json={"prompt": "echo:x", "background": True})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_generations"
    assert refused.headers["retry-after"] == "1"
    assert (await _background(bob))["status"] == "queued"  # Bob has his own allowance

    for created in running:
        async with alice.stream("GET", created["events_url"]) as response:
            await read_events(response)
    deadline = time.monotonic() + 5
    while (await alice.post("/v1/generations", json={"prompt": "echo:x", "background": True})).status_code != 202:
        assert time.monotonic() < deadline, "finished generations must free the caller's allowance"
        await asyncio.sleep(0.05)
