"""Webhook delivery rows on SQLite and PostgreSQL: written with the record, one per endpoint, claimed once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from shared.store.deliveries import Outcome
from shared.store.models import WebhookDelivery
from shared.store.repository import ResultStore, utcnow
from shared.webhooks import Endpoint, message_id
from tests.integration.test_store import final, store

__all__ = ["store"]  # the fixture, per backend

A = Endpoint.of("https://hooks.example.com/in?token=t0ps3cret")
B = Endpoint.of("http://127.0.0.1:9/other")
LEASE = timedelta(seconds=30)


async def test_save_writes_one_pending_row_per_endpoint_with_host_only(store: ResultStore) -> None:
    result = final()
    await store.save(result, [A, B])
    await store.save(result, [A, B])  # a repeated save (same attempt) adds nothing

    rows = await store.deliveries.of_generation(result.id)
    assert sorted(row.endpoint_host for row in rows) == ["127.0.0.1:9", "hooks.example.com"]
    assert {row.id for row in rows} == {message_id(result.id, A), message_id(result.id, B)}
    assert all(row.status == "pending" and row.attempts == 0 for row in rows)
    # The URL (which may carry a token) is stored nowhere: only its hash and host.
    stored = " ".join(f"{row.id} {row.endpoint_key} {row.endpoint_host}" for row in rows)
    assert "t0ps3cret" not in stored and "/in" not in stored


async def test_a_retried_attempts_record_keeps_the_same_deliveries(store: ResultStore) -> None:
    first = final(status="error", error_code="upstream_error", attempts=1)
    await store.save(first, [A])
    await store.save(final(id=first.id, attempts=2), [A])
    rows = await store.deliveries.of_generation(first.id)
    assert [row.id for row in rows] == [message_id(first.id, A)]


async def test_ensure_webhooks_adds_rows_only_to_a_recorded_ending(store: ResultStore) -> None:
    result = final(status="cancelled", error_code="cancelled")
    await store.ensure_webhooks(result.id, [A])
    assert await store.deliveries.of_generation(result.id) == []
    await store.save(result)
    await store.ensure_webhooks(result.id, [A])
    await store.ensure_webhooks(result.id, [A])
    assert len(await store.deliveries.of_generation(result.id)) == 1


async def test_concurrent_claims_of_a_due_row_grant_exactly_one(store: ResultStore) -> None:
    result = final()
    await store.save(result, [A])
    [due] = await store.deliveries.due(10)
    claims = await asyncio.gather(*(store.deliveries.claim(due.id, f"w{i}", LEASE) for i in range(8)))
    granted = [claim for claim in claims if claim is not None]
    assert len(granted) == 1 and granted[0].attempt == 1
    assert await store.deliveries.due(10) == []  # leased: not due for anyone else


async def test_a_retry_is_due_at_its_time_and_counts_attempts(store: ResultStore) -> None:
    result = final()
    await store.save(result, [A])
    [due] = await store.deliveries.due(10)
    claimed = await store.deliveries.claim(due.id, "w1", LEASE)
    assert claimed is not None
    later = utcnow() + timedelta(hours=1)
    assert await store.deliveries.settle(claimed, "w1", Outcome(False, 500, "HTTP 500", later))
    assert await store.deliveries.due(10) == []
    [row] = await store.deliveries.of_generation(result.id)
    assert (row.status, row.attempts, row.last_status_code, row.lease_owner) == ("pending", 1, 500, None)

    await _make_due(store, due.id)
    again = await store.deliveries.claim(due.id, "w2", LEASE)
    assert again is not None and again.attempt == 2
    assert await store.deliveries.settle(again, "w2", Outcome(True, 204, None))
    [row] = await store.deliveries.of_generation(result.id)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 204)
    assert row.delivered_at is not None


async def test_a_lapsed_lease_is_taken_over_and_the_old_owner_cannot_settle(store: ResultStore) -> None:
    result = final()
    await store.save(result, [A])
    [due] = await store.deliveries.due(10)
    dead = await store.deliveries.claim(due.id, "dead", timedelta(seconds=-1))  # a worker killed mid-send
    assert dead is not None
    taker = await store.deliveries.claim(due.id, "alive", LEASE)
    assert taker is not None and taker.attempt == 2
    assert not await store.deliveries.settle(dead, "dead", Outcome(True, 200, None))
    assert await store.deliveries.settle(taker, "alive", Outcome(False, None, "ConnectError"))
    [row] = await store.deliveries.of_generation(result.id)
    assert (row.status, row.last_error) == ("failed", "ConnectError")  # no retry time: given up


async def test_purge_deletes_old_deliveries_with_their_records(store: ResultStore) -> None:
    old, new = final(finished_at=utcnow() - timedelta(days=40)), final()
    await store.save(old, [A])
    await store.save(new, [A])
    statement = update(WebhookDelivery).where(WebhookDelivery.generation_id == old.id)
    async with store.engine.begin() as connection:
        await connection.execute(statement.values(created_at=utcnow() - timedelta(days=40)))
    await store.purge(timedelta(days=30))
    assert await store.deliveries.of_generation(old.id) == []
    assert len(await store.deliveries.of_generation(new.id)) == 1


async def _make_due(store: ResultStore, delivery_id: str) -> None:
    statement = update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(next_attempt_at=utcnow())
    async with store.engine.begin() as connection:
        await connection.execute(statement)


async def test_claim_fresh_takes_untried_rows_of_many_generations_before_they_are_due(store: ResultStore) -> None:
    first, second, tried = final(), final(), final()
    for result in (first, second, tried):
        await store.save(result, [A, B], webhooks_due_in=3600)
    await _make_due(store, message_id(tried.id, A))
    taken = await store.deliveries.claim(message_id(tried.id, A), "w0", LEASE)
    assert taken is not None
    assert await store.deliveries.settle(taken, "w0", Outcome(False, 500, "HTTP 500", utcnow()))

    claimed = await store.deliveries.claim_fresh({first.id, second.id, tried.id}, "w1", LEASE)
    # Every row not tried yet, due or not; the row with an attempt behind it keeps its retry schedule.
    assert sorted(c.id for c in claimed) == sorted(
        [message_id(g.id, e) for g in (first, second) for e in (A, B)] + [message_id(tried.id, B)]
    )
    assert all(c.attempt == 1 for c in claimed)
    assert await store.deliveries.claim_fresh({first.id}, "w2", LEASE) == []  # leased now
