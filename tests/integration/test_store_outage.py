"""A store outage while a generation ends: the terminal event waits for the durable record, then on_complete
runs once (real worker and API processes, a real PostgreSQL database made unavailable and brought back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.keys import active_key
from shared.store.db import make_engine
from shared.store.repository import ResultStore
from tests.support.databases import allow_connections, postgres_database
from tests.support.jobs import job_ended
from tests.support.sse import assert_well_formed, read_events, text_of
from tests.support.stack import Stack, running_stack
from tests.support.worker import worker_deps
from worker.reaper import reap


@pytest.fixture(scope="module")
async def outage_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with postgres_database() as database_url:
        logdir = tmp_path_factory.mktemp("store-outage")
        with running_stack(redis_url, logdir, DATABASE_URL=database_url) as stack:
            yield stack


async def _wait_for_log(stack: Stack, line: str, timeout: float = 30.0) -> None:
    log = stack.logdir / "worker.log"
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the worker never logged {line!r}"
        await asyncio.sleep(0.05)


async def test_done_waits_for_the_record_through_a_store_outage(outage_stack: Stack) -> None:
    stack = outage_stack
    database_url = stack.env["DATABASE_URL"]
    answer = "kept through the outage — 持久"
    body = {"prompt": f"echo:{answer}", "on_complete": "record_completion"}
    store_engine = make_engine(database_url)
    store = ResultStore(store_engine)
    seen_with_record: list[bool] = []
    await allow_connections(database_url, False)
    try:
        async with stack.client() as client, client.stream("POST", "/v1/generations", json=body) as response:
            generation_id = response.headers["x-generation-id"]
            reading = asyncio.ensure_future(read_events(response))
            # The worker has the whole text and keeps retrying the record past any fixed number of tries.
            await _wait_for_log(stack, f"saving {generation_id} failed (try 4)")
            assert not reading.done(), "the terminal event went out without its record"
            await allow_connections(database_url, True)
            events = await reading
            # The moment `done` is seen, the record is there.
            seen_with_record.append(await store.get(generation_id) is not None)
        assert seen_with_record == [True]
        assert_well_formed(events)
        assert [e.type for e in events][-1] == "done" and "reset" not in [e.type for e in events]
        assert text_of(events) == answer
        record = await store.get(generation_id)
        assert record is not None
        assert (record.status, record.text, record.attempts) == ("done", answer, 1)
        assert record.terminal_event_id == events[-1].id

        # on_complete ran once: its outcome is recorded, and the job (the only thing that runs it) has ended.
        deadline = time.monotonic() + 15
        while (record := await store.get(generation_id)) is None or record.hook_status != "ok":
            assert time.monotonic() < deadline, "on_complete's outcome was never recorded"
            await asyncio.sleep(0.05)
        await job_ended(stack.env["REDIS_URL"], generation_id)
        runs = (Path(stack.env["SSE_RELAY_TEST_HOOK_DIR"]) / "completions.log").read_text().splitlines()
        assert [line for line in runs if line.startswith(generation_id)] == [f"{generation_id} {len(answer)} done 1"]
    finally:
        await allow_connections(database_url, True)
        await store_engine.dispose()


async def test_a_cancel_while_the_store_is_away_succeeds_and_the_reaper_records_it(outage_stack: Stack) -> None:
    stack = outage_stack
    database_url = stack.env["DATABASE_URL"]
    async with worker_deps(stack.env["REDIS_URL"], database_url, key_prefix=stack.prefix) as deps:
        # Queued (admitted, its job not yet taken): only the API can end it.
        generation_id = new_generation_id()
        assert await deps.generations.admit("anonymous", generation_id)
        request = StoredRequest(messages=[{"role": "user", "content": "echo:never"}], model="demo")
        await deps.generations.create(generation_id, request, {"kept": True}, "anonymous")
        await allow_connections(database_url, False)
        try:
            async with stack.client() as client:
                cancel = await client.post(f"/v1/generations/{generation_id}/cancel")
            assert (cancel.status_code, cancel.json()["status"]) == (202, "cancelled")
        finally:
            await allow_connections(database_url, True)
        assert await deps.store.get(generation_id) is None

        await reap(deps, deps.generations.redis)  # type: ignore[arg-type]  # (or the stack worker's, if first)
        record = await deps.store.get(generation_id)
        assert record is not None
        assert (record.status, record.error_code, record.meta) == ("cancelled", "cancelled", {"kept": True})
        active = await deps.generations.redis.zrange(active_key(stack.prefix, "anonymous"), 0, -1)
        assert generation_id not in active
