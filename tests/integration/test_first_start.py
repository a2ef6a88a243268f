"""First contact on the default SQLite store: processes started together on a new file all come up.

API and workers each run the migrations at start-up; on SQLite, without a lock across processes, two of them
could both find the database empty, both create the tables, and all but one exit with "table already exists".
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from cli.embedded_redis import free_port
from shared.store.migrate import upgrade_url
from tests.support.sse import read_events, text_of
from tests.support.stack import Stack, stack_env

PROCESSES = 3  # the API and two workers
_barrier: Barrier | None = None


def _init(barrier: Barrier) -> None:
    global _barrier
    _barrier = barrier


def _migrate_at_once(url: str) -> int:
    """In a pool process: wait until all are here, then run the migrations as every process does at start-up."""
    assert _barrier is not None
    _barrier.wait(timeout=60)
    asyncio.run(upgrade_url(url))
    return os.getpid()


def test_processes_migrating_a_new_sqlite_file_at_the_same_instant_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with context.Pool(PROCESSES, initializer=_init, initargs=(barrier,)) as pool:
        for round_number in range(10):
            database = tmp_path / f"round-{round_number}.db"
            url = f"sqlite+aiosqlite:///{database}"
            results = [pool.apply_async(_migrate_at_once, (url,)) for _ in range(PROCESSES)]
            pids = {result.get(timeout=120) for result in results}  # re-raises a process's exception
            assert len(pids) == PROCESSES  # three different processes raced
            engine = create_engine(f"sqlite:///{database}")
            assert {"generations", "alembic_version"} <= set(inspect(engine).get_table_names())
            engine.dispose()


@pytest.fixture(scope="module")
def upstream(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One fake upstream shared by every round (only the relay's own processes share the database)."""
    logdir = tmp_path_factory.mktemp("first-start-upstream")
    holder = Stack(stack_env(redis_url, ""), "", f"http://127.0.0.1:{free_port()}", logdir)
    try:
        holder.start_upstream()
        yield holder
    finally:
        holder.stop()


@pytest.mark.parametrize("round_number", range(3))
async def test_api_and_two_workers_started_together_on_a_new_sqlite_file_serve_a_generation(
    round_number: int, redis_url: str, upstream: Stack, tmp_path: Path
) -> None:
    database = tmp_path / "sse-relay.db"
    env = stack_env(redis_url, upstream.upstream_url, DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    stack = Stack(env, f"http://127.0.0.1:{free_port()}", upstream.upstream_url, tmp_path)
    try:
        # No waiting between the starts: all three migrate the empty file at start-up.
        stack.launch_api()
        stack.launch_worker("worker-1")
        stack.launch_worker("worker-2")
        # Three interpreters starting at once on a busy machine: give them time (a crash still fails at once).
        stack.wait_api_ready(timeout=180)
        stack.wait_worker_ready("worker-1", timeout=180)
        stack.wait_worker_ready("worker-2", timeout=180)

        async with stack.client() as client:
            async with client.stream("POST", "/v1/generations", json={"prompt": f"echo:round {round_number}"}) as r:
                assert r.status_code == 200
                assert text_of(await read_events(r)) == f"round {round_number}"
            view = (await client.get(f"/v1/generations/{r.headers['x-generation-id']}")).json()
            assert view["status"] == "done"
        exited = {name: p.popen.poll() for name, p in stack.processes.items() if p.popen.poll() is not None}
        assert not exited, f"processes exited: {exited}\n{stack.logs()[-3000:]}"
    finally:
        for process in stack.processes.values():
            process.kill()  # only start-up is under test here: no need to wait for graceful shutdowns
