"""Every way out of a generation's job ends it or leaves the job retryable, and the reaper ends one whose job is
gone: the job run in-process against a real Redis (its own server where it is made to refuse writes) and a real
store (SQLite, or a PostgreSQL database made unavailable)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from redis.asyncio import Redis

from shared.ids import new_generation_id, parse_stream_id
from shared.jobs import StoredRequest, in_progress_key, job_key
from shared.keys import active_key
from shared.streams import read_range
from tests.support.databases import allow_connections, postgres_database
from tests.support.redis_server import own_redis
from tests.support.worker import worker_deps
from worker.deps import Deps
from worker.job import run_generation
from worker.reaper import reap

REQUEST = StoredRequest(messages=[{"role": "user", "content": "echo:hi"}], model="demo")


async def _created(deps: Deps, owner: str = "anonymous") -> str:
    """A generation as the API leaves it: admitted (counted against its caller) and its state written."""
    generation_id = new_generation_id()
    assert await deps.generations.admit(owner, generation_id)
    await deps.generations.create(generation_id, REQUEST, {"k": 1}, owner)
    return generation_id


async def _events(deps: Deps, generation_id: str) -> list[tuple[str, dict[str, Any]]]:
    entries = await read_range(deps.generations.redis, deps.generations.keys(generation_id).events)
    return [(entry_id, json.loads(raw)) for entry_id, raw in entries]


def _ctx(deps: Deps) -> dict[str, Any]:
    return {"deps": deps, "claims": {}}


async def _active(deps: Deps, owner: str = "anonymous") -> list[str]:
    members: list[str] = await deps.generations.redis.zrange(active_key(deps.settings.key_prefix, owner), 0, -1)
    return members


async def test_a_redis_that_refuses_writes_leaves_the_job_retryable_and_the_reaper_ends_it(tmp_path: Path) -> None:
    with own_redis(tmp_path / "redis") as server:
        async with worker_deps(server.url, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}") as deps:
            generation_id = await _created(deps)
            admin = Redis.from_url(server.url)
            try:
                # Out of memory: Redis answers every write with an OOM error (not a connection error).
                await admin.config_set("maxmemory", "1")
                with pytest.raises(Retry):
                    await run_generation(_ctx(deps), generation_id)
                await admin.config_set("maxmemory", "0")
            finally:
                await admin.aclose()
            state = await deps.generations.get(generation_id)
            assert state is not None and state.terminal_id is None

            # arq gave up on the job (tries used up) and deleted it: the reaper ends the generation.
            young = await reap(deps, deps.generations.redis)  # type: ignore[arg-type]
            assert young.ended == 0, "a generation younger than the grace is left alone"
            reaped = await reap(deps, deps.generations.redis, grace_s=0)  # type: ignore[arg-type]
            assert reaped.ended == 1
            events = await _events(deps, generation_id)
            assert [event["type"] for _, event in events] == ["error"]
            assert events[0][1]["code"] == "worker_lost"
            record = await deps.store.get(generation_id)
            assert record is not None
            assert (record.status, record.error_code) == ("error", "worker_lost")
            assert record.terminal_event_id == events[0][0]
            assert generation_id not in await _active(deps)
            assert (await reap(deps, deps.generations.redis, grace_s=0)).ended == 0  # type: ignore[arg-type]
            assert len(await _events(deps, generation_id)) == 1


async def test_the_reaper_leaves_generations_whose_job_exists(redis_url: str, tmp_path: Path) -> None:
    async with worker_deps(redis_url, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}") as deps:
        queued, running = await _created(deps), await _created(deps)
        redis = deps.generations.redis
        await redis.set(job_key(queued), b"job", px=60_000)
        await redis.set(in_progress_key(running), b"1", px=60_000)
        try:
            assert (await reap(deps, redis, grace_s=0)).ended == 0  # type: ignore[arg-type]
            assert set(await _active(deps)) == {queued, running}
        finally:
            await redis.delete(job_key(queued), in_progress_key(running))


async def test_a_generation_that_ended_without_its_record_gets_one_from_the_reaper(
    redis_url: str, tmp_path: Path
) -> None:
    # Cancelled while queued, and the API's write of its record failed (the store was away): the reaper writes it.
    async with worker_deps(redis_url, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}") as deps:
        generation_id = await _created(deps)
        assert (await deps.generations.cancel(generation_id))[0] == "cancelled"
        reaped = await reap(deps, deps.generations.redis, grace_s=0)  # type: ignore[arg-type]
        assert (reaped.ended, reaped.recorded) == (0, 1)
        record = await deps.store.get(generation_id)
        assert record is not None
        assert (record.status, record.error_code, record.meta) == ("cancelled", "cancelled", {"k": 1})
        assert generation_id not in await _active(deps)


async def test_worker_lost_is_written_after_entries_from_a_clock_ahead_of_the_workers(
    redis_url: str, tmp_path: Path
) -> None:
    async with worker_deps(redis_url, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", job_max_tries=1) as deps:
        generation_id = await _created(deps)
        await deps.generations.claim(generation_id)  # attempt 1, on a worker that then died
        # Attempt 1 wrote on a Redis whose clock is an hour ahead of this worker's (or this worker's lags).
        ahead = f"{int(time.time() * 1000) + 3_600_000}-0"
        events_key = deps.generations.keys(generation_id).events
        await deps.generations.redis.xadd(events_key, {"e": '{"type":"content","data":"a"}'}, id=ahead)

        # Its tries used up, the job ends the generation `worker_lost`.
        assert await run_generation(_ctx(deps), generation_id) == {"status": "error"}
        events = await _events(deps, generation_id)
        assert [event["type"] for _, event in events] == ["content", "error"]
        terminal_id, terminal = events[-1]
        assert terminal["code"] == "worker_lost"
        assert (parse_stream_id(terminal_id) or (0, 0)) > (parse_stream_id(ahead) or (0, 0))
        record = await deps.store.get(generation_id)
        assert record is not None and record.terminal_event_id == terminal_id
        assert generation_id not in await _active(deps)


async def test_a_store_outage_past_the_job_timeout_leaves_the_job_retryable(redis_url: str) -> None:
    # JOB_TIMEOUT_S runs out while the ending waits for the store: the job stays queued (arq's own timeout
    # would delete it), nothing terminal is written without its record, and the next try ends it.
    async with (
        postgres_database() as database_url,
        worker_deps(redis_url, database_url, job_max_tries=1, job_timeout_s=5) as deps,
    ):
        generation_id = await _created(deps)
        await deps.generations.claim(generation_id)  # attempt 1, on a worker that then died: its tries are used up
        await allow_connections(database_url, False)
        try:
            started = time.monotonic()
            with pytest.raises(Retry):
                await run_generation(_ctx(deps), generation_id)
            assert time.monotonic() - started < 15
            assert await _events(deps, generation_id) == []
        finally:
            await allow_connections(database_url, True)
        assert await run_generation(_ctx(deps), generation_id) == {"status": "error"}
        events = await _events(deps, generation_id)
        assert [event["code"] for _, event in events] == ["worker_lost"]
        record = await deps.store.get(generation_id)
        assert record is not None and record.terminal_event_id == events[0][0]
