"""The delivery loop's passes against a real store, Redis and HTTP receiver: outcomes, metrics, finality."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from shared.config import Settings
from shared.jobs import StoredRequest
from shared.redis_client import streams_client
from shared.state import Generations
from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.repository import ResultStore
from shared.webhooks import Endpoint, endpoints
from tests.integration.test_store import final
from tests.support.webhook_receiver import Receiver
from worker.webhooks import Deliverer

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def deliverer(redis_url: str, tmp_path: Path, receiver: Receiver) -> AsyncIterator[Deliverer]:
    receiver.status, receiver.fail_first = 204, 0
    settings = Settings(
        redis_url=redis_url,
        key_prefix="t" + uuid.uuid4().hex[:10],
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        webhook_urls=[receiver.url],
        webhook_secret=SecretStr(SECRET),
        webhook_retry_first_s=0.05,
        webhook_retry_max_s=0.05,
        webhook_max_attempts=2,
    )
    engine = make_engine(settings.database_url)
    await upgrade(engine)
    store = ResultStore(engine)
    generations = Generations(streams_client(settings), settings)
    deliverer = Deliverer(settings, store.deliveries, store, generations)
    yield deliverer
    await deliverer.stop()
    await generations.redis.aclose()
    await engine.dispose()


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("sse_relay_webhook_deliveries_total", {"outcome": outcome}) or 0.0


async def one_pass(deliverer: Deliverer) -> int:
    """A pass, and the sends it started, to their end."""
    started = await deliverer.run_once()
    await deliverer.drain()
    return started


async def until_sent(deliverer: Deliverer, receiver: Receiver, generation_id: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(receiver.of(generation_id)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests for {generation_id}"
        await one_pass(deliverer)
        await asyncio.sleep(0.02)


async def test_a_retry_then_a_delivery_are_counted(deliverer: Deliverer, receiver: Receiver) -> None:
    retried, delivered = counted("retried"), counted("delivered")
    receiver.fail_first = 1
    result = final()
    await deliverer.results.save(result, deliverer.targets)
    await until_sent(deliverer, receiver, result.id, 2)
    [row] = await deliverer.deliveries.of_generation(result.id)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 204)
    assert (counted("retried") - retried, counted("delivered") - delivered) == (1, 1)
    assert await one_pass(deliverer) == 0  # delivered: nothing more to send


async def test_attempts_stop_at_the_maximum_and_are_counted_failed(deliverer: Deliverer, receiver: Receiver) -> None:
    failed = counted("failed")
    receiver.status = 500
    result = final(status="error", error_code="upstream_unavailable")
    await deliverer.results.save(result, deliverer.targets)
    await until_sent(deliverer, receiver, result.id, 2)
    [row] = await deliverer.deliveries.of_generation(result.id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("failed", 2, 500, "HTTP 500")
    assert counted("failed") - failed == 1
    assert await one_pass(deliverer) == 0
    assert len(receiver.of(result.id)) == 2


async def test_the_worker_that_published_an_ending_sends_it_before_it_is_due(
    deliverer: Deliverer, receiver: Receiver
) -> None:
    result = final()
    await deliverer.results.save(result, deliverer.targets, webhooks_due_in=3600)
    assert await one_pass(deliverer) == 0  # written before the terminal event: not due for the poll
    deliverer.published(result.id)
    assert await one_pass(deliverer) == 1
    [row] = await deliverer.deliveries.of_generation(result.id)
    assert (row.status, row.attempts) == ("delivered", 1)
    deliverer.published(result.id)  # told twice: nothing more to send
    assert await one_pass(deliverer) == 0
    assert len(receiver.of(result.id)) == 1


async def test_an_ending_whose_terminal_event_is_not_published_waits(deliverer: Deliverer, receiver: Receiver) -> None:
    # The attempt that wrote this record died before publishing its terminal event: Redis still holds the
    # generation as running, and the next attempt will replace the record. Nothing may be sent for it yet.
    result = final()
    request = StoredRequest(messages=[{"role": "user", "content": "echo:x"}], model="demo")
    await deliverer.generations.create(result.id, request, {}, "alice")
    await deliverer.results.save(result, deliverer.targets)
    assert await one_pass(deliverer) == 0
    [row] = await deliverer.deliveries.of_generation(result.id)
    assert row.status == "pending" and row.attempts == 0
    assert row.next_attempt_at.replace(tzinfo=UTC) > datetime.now(UTC)
    assert receiver.of(result.id) == []


async def test_a_removed_endpoint_fails_its_rows_without_a_request(deliverer: Deliverer, receiver: Receiver) -> None:
    result = final()
    gone = Endpoint.of("http://127.0.0.1:9/removed-since")
    await deliverer.results.save(result, [gone])
    assert await one_pass(deliverer) == 1
    [row] = await deliverer.deliveries.of_generation(result.id)
    assert (row.status, row.last_error) == ("failed", "endpoint no longer configured")


async def test_the_body_has_text_only_when_configured(deliverer: Deliverer, receiver: Receiver) -> None:
    quiet, loud = final(text="the answer"), final(text="the answer")
    await deliverer.results.save(quiet, deliverer.targets)
    await until_sent(deliverer, receiver, quiet.id, 1)
    deliverer.settings = deliverer.settings.model_copy(update={"webhook_include_text": True})
    await deliverer.results.save(loud, endpoints(deliverer.settings))
    await until_sent(deliverer, receiver, loud.id, 1)
    assert "text" not in receiver.of(quiet.id)[0].data
    assert json.loads(receiver.of(loud.id)[0].body)["data"]["text"] == "the answer"
