"""ResultStore.save's group commit on SQLite and PostgreSQL: saves that arrive during a write share the next
transaction, each with its own outcome; failures and cancellations stay with their own caller."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.models import WebhookDelivery
from shared.store.repository import FinalResult, ResultStore
from shared.webhooks import Endpoint
from tests.integration.test_store import fetch, final, store
from tests.support.databases import sqlite_url

__all__ = ["store"]  # the fixture, per backend

HOOK = Endpoint.of("https://hooks.example.com/in")


class Commits:
    """Transactions committed by the store's engine."""

    def __init__(self, store: ResultStore) -> None:
        self.count = 0
        event.listen(store.engine.sync_engine, "commit", self._committed)

    def _committed(self, _: Any) -> None:
        self.count += 1


@asynccontextmanager
async def writes_held(store: ResultStore) -> AsyncIterator[None]:
    """Another connection holds the lock every write of the store needs until exit: the store's writes wait."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
        finally:
            holder.close()  # rolls back: the holder wrote nothing
        return
    engine = make_engine(url.render_as_string(hide_password=False), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("LOCK TABLE generations IN EXCLUSIVE MODE"))
            yield
    finally:
        await engine.dispose()


@asynccontextmanager
async def a_save_in_flight(store: ResultStore, result: FinalResult) -> AsyncIterator[asyncio.Task[bool]]:
    """Saves `result` and yields its task once its upsert has been sent; that transaction ends only after exit."""
    sent = asyncio.Event()

    def on_execute(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO GENERATIONS"):
            sent.set()

    event.listen(store.engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        async with writes_held(store):
            task = asyncio.create_task(store.save(result))
            await asyncio.wait_for(sent.wait(), 10)
            yield task
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", on_execute)


async def queued(store: ResultStore, results: Sequence[FinalResult]) -> list[asyncio.Task[bool]]:
    """Starts a save of each of `results` and returns once all of them wait for the next write."""
    tasks = [asyncio.create_task(store.save(result, [HOOK])) for result in results]
    for _ in range(1000):
        if store._saves.waiting == len(tasks):
            return tasks
        await asyncio.sleep(0)
    raise AssertionError(f"{store._saves.waiting} of {len(tasks)} saves queued")


def flushers() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if "GroupCommit._flush" in repr(task.get_coro())]


async def deliveries_of(store: ResultStore, generation_id: str) -> int:
    statement = select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.generation_id == generation_id)
    async with store.engine.connect() as connection:
        return (await connection.execute(statement)).scalar_one()


async def test_concurrent_saves_share_transactions_and_each_row_keeps_its_deliveries(store: ResultStore) -> None:
    results = [final() for _ in range(20)]
    commits = Commits(store)

    saved = await asyncio.gather(*(store.save(result, [HOOK]) for result in results))

    assert saved == [True] * 20
    assert commits.count < 20
    for result in results:
        assert (await fetch(store, result.id)).text == result.text
        assert await deliveries_of(store, result.id) == 1
    assert flushers() == []  # nothing left running once every save is answered


async def test_saves_that_arrive_during_a_write_go_together_and_each_gets_its_own_outcome(
    store: ResultStore,
) -> None:
    newer = final(attempts=2, text="attempt 2")
    older = final(attempts=1, text="attempt 1")
    await store.save(newer)
    await store.save(older)
    commits = Commits(store)

    async with a_save_in_flight(store, final()) as first:
        fresh, stale, retried = await queued(
            store,
            [final(), replace(newer, attempts=1, text="stale"), replace(older, attempts=2, text="retried")],
        )

    assert [await first, await fresh, await stale, await retried] == [True, True, False, True]
    assert commits.count == 2  # the first save alone, then the three that waited for it
    assert (await fetch(store, newer.id)).text == "attempt 2"
    assert (await fetch(store, older.id)).text == "retried"


async def test_a_failing_row_fails_only_its_own_save_and_the_rest_of_its_batch_is_written(
    store: ResultStore,
) -> None:
    good, bad, also_good = final(), final(status=cast(str, None)), final()  # status is NOT NULL

    async with a_save_in_flight(store, final()) as first:
        tasks = await queued(store, [good, bad, also_good])

    assert await first is True
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], IntegrityError)
    for written in (good, also_good):
        assert (await fetch(store, written.id)).status == "done"
        assert await deliveries_of(store, written.id) == 1
    assert await store.get(bad.id) is None
    assert await deliveries_of(store, bad.id) == 0


async def test_a_lone_save_is_one_transaction_started_without_a_timer(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save(final())  # the pool's connection is open: what follows is the save alone
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def spy(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when - loop.time())
        return call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", spy)
    commits = Commits(store)
    result = final()

    assert await store.save(result) is True

    monkeypatch.undo()
    assert commits.count == 1
    assert timers == []  # nothing waited for company: no delay, no timeout
    assert (await fetch(store, result.id)).text == result.text


async def test_a_save_cancelled_while_waiting_is_dropped_and_the_others_are_written(store: ResultStore) -> None:
    dropped = final()
    commits = Commits(store)

    async with a_save_in_flight(store, final()) as first:
        before, cancelled, after = await queued(store, [final(), dropped, final()])
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled

    assert [await first, await before, await after] == [True, True, True]
    assert commits.count == 2
    assert await store.get(dropped.id) is None
    assert flushers() == []
    assert await store.save(final()) is True  # the next save starts a new flusher
    assert flushers() == []


async def test_a_save_cancelled_after_its_transaction_began_leaves_it_to_finish_for_everyone(
    store: ResultStore,
) -> None:
    result = final()

    async with a_save_in_flight(store, result) as first:
        waiting = await queued(store, [final(), final()])
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

    assert await asyncio.gather(*waiting) == [True, True]
    assert (await fetch(store, result.id)).text == result.text
    assert flushers() == []


def test_a_store_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    with sqlite_url(tmp_path) as url:
        store = ResultStore(make_engine(url, poolclass=NullPool))  # built outside any loop
        first, second = final(), final()
        asyncio.run(upgrade(store.engine))
        assert asyncio.run(store.save(first)) is True
        assert asyncio.run(store.save(second)) is True
        assert asyncio.run(store.get(second.id)) is not None
        asyncio.run(store.engine.dispose())
