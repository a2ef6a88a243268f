"""Webhooks end to end: real API, worker, Redis, fake provider and a real HTTP receiver.

Each ending (done, error, cancelled) reaches the configured endpoint once, signed as Standard Webhooks; a
failed attempt is retried under the same webhook-id; a worker SIGKILLed with deliveries pending leaves them
in the store for the next worker; no secret and no URL from a request is ever used or shown.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.config import Settings
from shared.jobs import StoredRequest
from shared.redis_client import streams_client
from shared.state import Generations
from tests.support.databases import postgres_database
from tests.support.metrics import scrape, value
from tests.support.scan import redis_dump
from tests.support.sse import EventReader
from tests.support.stack import Stack, running_stack
from tests.support.webhook_receiver import PATH_TOKEN, Receiver

METRIC = "sse_relay_webhook_deliveries_total"
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hook_stack(redis_url: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: the last test SIGKILLs its worker. Retries within a second so the tests stay short.
    with running_stack(
        redis_url,
        tmp_path_factory.mktemp("webhook-stack"),
        WEBHOOK_URLS=receiver.url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_RETRY_FIRST_S="0.3",
        WEBHOOK_RETRY_MAX_S="1",
        WEBHOOK_POLL_S="0.2",
        WEBHOOK_TIMEOUT_S="2",
    ) as stack:
        yield stack


@pytest.fixture
async def hook_client(hook_stack: Stack, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    receiver.status, receiver.fail_first = 204, 0
    async with hook_stack.client() as client:
        yield client


async def settled(client: httpx.AsyncClient, generation_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The generation's view once every delivery is delivered or given up."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = (await client.get(f"/v1/generations/{generation_id}")).json()
        if view.get("webhooks") and all(w["status"] != "pending" for w in view["webhooks"]):
            return view
        assert time.monotonic() < deadline, f"deliveries of {generation_id} did not settle: {view.get('webhooks')}"
        await asyncio.sleep(0.1)


async def start(client: httpx.AsyncClient, **body: Any) -> str:
    created = await client.post("/v1/generations", json={"background": True, **body})
    assert created.status_code == 202, created.text
    generation_id: str = created.json()["id"]
    return generation_id


def verify(secret: str, request: Any) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


async def test_a_failed_first_attempt_is_retried_under_the_same_id_and_verifies(
    hook_client: httpx.AsyncClient, receiver: Receiver, hook_stack: Stack
) -> None:
    receiver.fail_first = 1
    before = scrape(hook_stack.worker_metrics_url())
    generation_id = await start(hook_client, prompt="echo:hello webhooks", metadata={"ticket": "T-9"})

    view = await settled(hook_client, generation_id)
    after = scrape(hook_stack.worker_metrics_url())
    for outcome, moved in (("retried", 1), ("delivered", 1), ("failed", 0)):
        counted = value(after, METRIC, outcome=outcome) - value(before, METRIC, outcome=outcome)
        assert counted == moved, outcome
    first, retry = receiver.of(generation_id)
    assert first.webhook_id == retry.webhook_id == view["webhooks"][0]["id"]
    assert first.body == retry.body, "a retry sends the same message"
    assert int(retry.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"])
    payload = verify(SECRET, retry)
    assert verify(SECRET, first) == payload
    assert payload["type"] == "generation.completed"
    data = payload["data"]
    assert data["id"] == generation_id and data["status"] == "done"
    assert data["model"] == view["model"] and data["finish_reason"] == "stop"
    assert data["usage"] == view["usage"] and data["usage"]["completion_tokens"] > 0
    assert data["metadata"] == {"ticket": "T-9"} and data["error"] is None
    assert data["finished_at"] and data["created_at"]
    assert "text" not in data, "text only with WEBHOOK_INCLUDE_TEXT"
    assert payload["timestamp"] == data["finished_at"]

    [delivery] = view["webhooks"]
    assert delivery["endpoint"] == f"127.0.0.1:{receiver.port}"
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("delivered", 2, 204)
    assert delivery["delivered_at"] and delivery["next_attempt_at"] is None
    assert PATH_TOKEN not in json.dumps(view)


async def test_a_wrong_secret_or_a_changed_body_does_not_verify(
    hook_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    generation_id = await start(hook_client, prompt="echo:signed")
    await settled(hook_client, generation_id)
    [request] = receiver.of(generation_id)
    verify(SECRET, request)
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        verify(other, request)
    changed = type(request)(request.headers, request.body.replace(b'"done"', b'"error"'))
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, changed)


async def test_a_provider_failure_is_delivered_once_as_generation_failed(
    hook_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    generation_id = await start(hook_client, prompt="echo:x", model="status-400")
    view = await settled(hook_client, generation_id)
    assert view["status"] == "error"
    [request] = receiver.of(generation_id)
    payload = verify(SECRET, request)
    assert payload["type"] == "generation.failed"
    assert payload["data"]["status"] == "error"
    assert payload["data"]["error"] == view["error"] and view["error"]["code"] == "upstream_bad_request"
    assert view["webhooks"][0]["attempts"] == 1


async def test_a_cancelled_running_generation_is_delivered_once_as_generation_cancelled(
    hook_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    generation_id = await start(hook_client, prompt="echo:abcdefgh", model="stall@stall_s=30,after=1")
    async with hook_client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
        reader = EventReader(response)
        assert [e.type for e in await reader.take(1)] == ["content"]
        assert (await hook_client.post(f"/v1/generations/{generation_id}/cancel")).status_code == 202
        await reader.take()
    view = await settled(hook_client, generation_id)
    [request] = receiver.of(generation_id)
    payload = verify(SECRET, request)
    assert payload["type"] == "generation.cancelled"
    assert payload["data"]["error"]["code"] == "cancelled" and view["status"] == "cancelled"


async def test_a_generation_cancelled_while_queued_is_delivered_once(
    hook_client: httpx.AsyncClient, receiver: Receiver, hook_stack: Stack
) -> None:
    # Created in Redis but never enqueued: only the API ends it, and records it with its deliveries.
    settings = Settings(redis_url=hook_stack.env["REDIS_URL"], key_prefix=hook_stack.prefix)
    redis = streams_client(settings)
    generation_id = "gen_" + secrets.token_hex(12) + str(int(time.time() * 1000))[-8:]
    request = StoredRequest(messages=[{"role": "user", "content": "echo:never"}], model="demo")
    try:
        await Generations(redis, settings).create(generation_id, request, {}, "anonymous")
        cancel = await hook_client.post(f"/v1/generations/{generation_id}/cancel")
        assert cancel.json()["status"] == "cancelled"
    finally:
        await redis.aclose()
    view = await settled(hook_client, generation_id)
    [delivered] = receiver.of(generation_id)
    assert verify(SECRET, delivered)["type"] == "generation.cancelled"
    assert view["webhooks"][0]["attempts"] == 1


async def test_a_request_never_chooses_where_webhooks_go(hook_client: httpx.AsyncClient, receiver: Receiver) -> None:
    elsewhere = Receiver()
    url = f"http://127.0.0.1:{elsewhere.port}/elsewhere"
    try:
        refused = await hook_client.post(
            "/v1/generations", json={"prompt": "echo:x", "background": True, "webhook_url": url}
        )
        assert refused.status_code == 422, refused.text
        # A URL in metadata is the caller's data, sent to the configured endpoint and nowhere else.
        generation_id = await start(hook_client, prompt="echo:y", metadata={"webhook_url": url})
        view = await settled(hook_client, generation_id)
        assert [w["endpoint"] for w in view["webhooks"]] == [f"127.0.0.1:{receiver.port}"]
        assert len(receiver.of(generation_id)) == 1
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


async def test_no_secret_in_a_message_log_row_or_redis(
    hook_client: httpx.AsyncClient, receiver: Receiver, hook_stack: Stack
) -> None:
    receiver.fail_first = 1  # a retry logs its reason and endpoint too
    generation_id = await start(hook_client, prompt="echo:secrets stay home")
    await settled(hook_client, generation_id)
    bodies = b"".join(r.body for r in receiver.of(generation_id)).decode()
    headers = json.dumps([r.headers for r in receiver.of(generation_id)])
    forbidden = [SECRET, SECRET.removeprefix("whsec_"), hook_stack.secret, PATH_TOKEN]
    for secret in forbidden:
        assert secret not in bodies and secret not in headers
    logs = hook_stack.logs()
    assert f"to 127.0.0.1:{receiver.port}: attempt 1 failed" in logs, "the retry must have been logged"
    assert not [s for s in forbidden if s in logs]
    dump = await redis_dump(hook_stack.env["REDIS_URL"])
    assert not [s for s in forbidden if s.encode() in dump]
    database = Path(hook_stack.env["DATABASE_URL"].split(":///", 1)[1])
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert generation_id.encode() in stored
    assert not [s for s in forbidden if s.encode() in stored]


async def test_deliveries_pending_when_the_worker_is_killed_are_sent_by_the_next_worker(
    hook_client: httpx.AsyncClient, receiver: Receiver, hook_stack: Stack
) -> None:
    receiver.status = 503  # the endpoint is down: every attempt fails and is retried
    generation_id = await start(hook_client, prompt="echo:survives the worker")
    failed = await receiver.wait_for(generation_id, 2)
    hook_stack.processes["worker"].kill()
    receiver.status = 204
    hook_stack.start_worker("worker-2")

    view = await settled(hook_client, generation_id)
    [delivery] = view["webhooks"]
    delivered = receiver.of(generation_id)
    assert delivery["status"] == "delivered" and delivery["attempts"] == len(delivered) > len(failed)
    assert {r.webhook_id for r in delivered} == {delivery["id"]}
    assert verify(SECRET, delivered[-1])["type"] == "generation.completed"
    assert "worker-2" in hook_stack.processes and hook_stack.processes["worker"].popen.returncode is not None


@pytest.fixture(scope="module")
async def pg_hook_stack(
    redis_url: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with postgres_database() as database_url:
        with running_stack(
            redis_url,
            tmp_path_factory.mktemp("webhook-pg-stack"),
            DATABASE_URL=database_url,
            WEBHOOK_URLS=receiver.url,
            WEBHOOK_SECRET=SECRET,
            WEBHOOK_RETRY_FIRST_S="0.2",
            WEBHOOK_RETRY_MAX_S="0.5",
            WEBHOOK_POLL_S="0.1",
        ) as stack:
            stack.start_worker("worker-2")
            yield stack


async def test_two_workers_on_postgresql_deliver_each_ending_once_and_each_retry_once(
    pg_hook_stack: Stack, receiver: Receiver
) -> None:
    # Retries are found by both workers' polls: the claim lets exactly one of them send each attempt.
    receiver.status, receiver.fail_first = 204, 1
    async with pg_hook_stack.client() as client:
        ids = [await start(client, prompt=f"echo:pg {i}", model="demo@delay_ms=0") for i in range(12)]
        views = [await settled(client, generation_id) for generation_id in ids]
    for generation_id, view in zip(ids, views, strict=True):
        first, retry = receiver.of(generation_id)
        assert first.webhook_id == retry.webhook_id == view["webhooks"][0]["id"]
        assert verify(SECRET, retry)["data"]["id"] == generation_id
        assert (view["webhooks"][0]["status"], view["webhooks"][0]["attempts"]) == ("delivered", 2)
    logs = pg_hook_stack.logs()
    assert (
        sum(
            f"msg_{generation_id}_" in line and "delivered to" in line
            for line in logs.splitlines()
            for generation_id in ids
        )
        == 12
    )
    assert "Traceback" not in logs


@pytest.fixture(scope="module")
def keyed_hook_stack(redis_url: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logdir = tmp_path_factory.mktemp("keyed-webhook-stack")
    env = {"WEBHOOK_URLS": receiver.url, "WEBHOOK_SECRET": SECRET, "SSE_RELAY_API_KEYS": "owner-key-1234"}
    with running_stack(redis_url, logdir, **env) as stack:
        yield stack


async def test_only_the_owner_sees_the_deliveries_a_read_token_does_not(
    keyed_hook_stack: Stack, receiver: Receiver
) -> None:
    """Deliveries name the operator's endpoints: a browser holding only the read token gets the generation
    without them."""
    receiver.status, receiver.fail_first = 204, 0
    owner = {"Authorization": "Bearer owner-key-1234"}
    async with keyed_hook_stack.client(headers=owner) as client:
        created = (await client.post("/v1/generations", json={"prompt": "echo:mine", "background": True})).json()
        view = await settled(client, created["id"])
    assert [w["status"] for w in view["webhooks"]] == ["delivered"]
    async with keyed_hook_stack.client() as browser:
        seen = await browser.get(f"/v1/generations/{created['id']}", params={"token": created["token"]})
    assert seen.status_code == 200
    assert (seen.json()["text"], seen.json()["webhooks"]) == ("mine", [])
