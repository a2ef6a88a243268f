"""The whole flow with PostgreSQL as the result store: real API and worker processes, real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from shared.keys import generation_keys
from shared.store.db import make_engine
from tests.support.databases import postgres_database
from tests.support.sse import read_events, text_of
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="module")
async def pg_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with postgres_database() as database_url:
        logdir = tmp_path_factory.mktemp("pg-stack")
        with running_stack(redis_url, logdir, DATABASE_URL=database_url) as stack:
            yield stack


async def test_results_and_hooks_on_postgresql(pg_stack: Stack) -> None:
    answer = "stored in PostgreSQL — 数据库 🐘"
    async with pg_stack.client() as client:
        body = {"prompt": f"echo:{answer}", "on_complete": "record_completion", "metadata": {"db": "pg"}}
        async with client.stream("POST", "/v1/generations", json=body) as response:
            generation_id = response.headers["x-generation-id"]
            live = await read_events(response)
        completions = Path(pg_stack.env["SSE_RELAY_TEST_HOOK_DIR"]) / "completions.log"
        deadline = time.monotonic() + 10
        # The hook writes its log line, then returns; the worker records its outcome after that.
        while (await client.get(f"/v1/generations/{generation_id}")).json()["on_complete"]["status"] != "ok":
            assert time.monotonic() < deadline, "on_complete's outcome never became ok"
            await asyncio.sleep(0.05)
        assert generation_id in completions.read_text()

        redis = Redis.from_url(pg_stack.env["REDIS_URL"])
        keys = generation_keys(pg_stack.prefix, generation_id)
        await redis.delete(keys.events, keys.state)
        await redis.aclose()

        view = (await client.get(f"/v1/generations/{generation_id}")).json()
        assert (view["status"], view["text"], view["metadata"]) == ("done", answer, {"db": "pg"})
        assert view["on_complete"]["status"] == "ok"
        async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
            replay = await read_events(response)
        assert text_of(replay) == answer and replay[-1].id == live[-1].id

    engine = make_engine(pg_stack.env["DATABASE_URL"])
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT count(*) FROM generations WHERE id = :id"),
                                             {"id": generation_id})).scalar_one()  # fmt: skip
            dump = " ".join(str(row) for row in (await connection.execute(text("SELECT * FROM generations"))).all())
    finally:
        await engine.dispose()
    assert rows == 1
    assert pg_stack.secret not in dump, "the provider key reached the database"


async def test_live_stream_works_with_postgresql_store(pg_stack: Stack) -> None:
    async with pg_stack.client() as client, client.stream("POST", "/v1/generations", json={"prompt": "echo:pg"}) as r:
        assert text_of(await read_events(r)) == "pg"
