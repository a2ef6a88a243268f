"""What `sse-relay worker` (worker/relay.py) adds to arq, pinned on real processes: with arq's poll every 5 s,
a generation still starts within milliseconds (also after a worker restart, and after a Redis outage its poll
loop rode out); a worker never starts a second copy of its own running job; plain `arq worker.main.WorkerSettings`
still runs jobs, by polling; `sse-relay worker --check` is the health check."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared.jobs import JOB_FUNCTION, in_progress_key
from shared.keys import generation_keys, worker_health_key
from tests.support.redis_server import OwnRedis, own_redis
from tests.support.sse import EventReader, assert_well_formed, read_events, text_of
from tests.support.stack import PLAIN_ARQ_WORKER, ROOT, WORKER, Stack, running_stack, wait_for

POLL_DELAY_S = 5.0
# Well below the poll delay: only a wake-up starts a job this soon (a poll would take 2.5 s on average).
FAST_START_S = 1.0
ROUNDS = 6


@pytest.fixture(scope="module")
def slow_poll_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    # Its own server: one test takes it away.
    with own_redis(tmp_path_factory.mktemp("pickup-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def slow_poll_stack(slow_poll_redis: OwnRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logdir = tmp_path_factory.mktemp("pickup-stack")
    with running_stack(slow_poll_redis.url, logdir, WORKER_POLL_DELAY_S=str(POLL_DELAY_S)) as stack:
        yield stack


@pytest.fixture
async def slow_client(slow_poll_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with slow_poll_stack.client() as client:
        yield client


def _only_worker(stack: Stack, name: str, command: list[str] = WORKER) -> None:
    """Stops every worker of the stack (SIGTERM), then starts this one and waits until it is ready."""
    for process in list(stack.processes.values()):
        if process.name.startswith("worker") or process.name.startswith("plain"):
            process.stop()
    stack.start_worker(name, command)


async def _start_latency(client: httpx.AsyncClient, text: str) -> float:
    """Seconds from the API's creation of a generation to a worker's claim of it (both stamped in its state)."""
    async with client.stream("POST", "/v1/generations", json={"prompt": f"echo:{text}"}) as response:
        assert response.status_code == 200
        generation_id = response.headers["x-generation-id"]
        events = await read_events(response)
    assert_well_formed(events)
    assert events[-1].type == "done" and text_of(events) == text
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    started, created = (datetime.fromisoformat(view[name]) for name in ("started_at", "created_at"))
    return (started - created).total_seconds()


async def _latencies(client: httpx.AsyncClient, label: str) -> list[float]:
    latencies = [await _start_latency(client, f"{label} {i}") for i in range(ROUNDS)]
    median_ms, max_ms = statistics.median(latencies) * 1000, max(latencies) * 1000
    print(f"{label}: start latency median {median_ms:.0f} ms, max {max_ms:.0f} ms")
    return latencies


async def test_generations_start_within_milliseconds_despite_a_5_s_poll(
    slow_poll_stack: Stack, slow_client: httpx.AsyncClient
) -> None:
    _only_worker(slow_poll_stack, "worker-fast")
    assert max(await _latencies(slow_client, "fresh worker")) < FAST_START_S


async def test_generations_start_within_milliseconds_after_a_worker_restart(
    slow_poll_stack: Stack, slow_client: httpx.AsyncClient
) -> None:
    _only_worker(slow_poll_stack, "worker-first")
    await _start_latency(slow_client, "before the restart")
    _only_worker(slow_poll_stack, "worker-restarted")
    assert max(await _latencies(slow_client, "restarted worker")) < FAST_START_S


async def test_the_worker_outlives_redis_errors_in_its_poll_loop(
    slow_poll_stack: Stack, slow_poll_redis: OwnRedis, slow_client: httpx.AsyncClient
) -> None:
    _only_worker(slow_poll_stack, "worker-outage")
    worker = slow_poll_stack.processes["worker-outage"]
    slow_poll_redis.kill()
    try:
        # The positive signal that a poll iteration met the error (arq alone would have ended the process).
        wait_for(lambda: "Redis unavailable" in worker.log.read_text(), "the poll loop to fail", worker, 20)
    finally:
        slow_poll_redis.start()
    wait_for(lambda: "Redis is back" in worker.log.read_text(), "the poll loop to recover", worker, 20)
    deadline = time.monotonic() + 30
    while (await slow_client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "the API never saw Redis come back"
        await asyncio.sleep(0.1)
    await _start_latency(slow_client, "after the outage")  # the wake-up listener may still be between retries
    assert max(await _latencies(slow_client, "after an outage")) < FAST_START_S
    assert worker.popen.poll() is None


async def test_plain_arq_still_runs_jobs_by_polling(slow_poll_stack: Stack, slow_client: httpx.AsyncClient) -> None:
    _only_worker(slow_poll_stack, "plain-arq", PLAIN_ARQ_WORKER)
    latency = await _start_latency(slow_client, "run by arq's own worker")
    print(f"plain arq: start latency {latency * 1000:.0f} ms (it polls every {POLL_DELAY_S:.0f} s)")
    assert latency < POLL_DELAY_S + 2.0
    _only_worker(slow_poll_stack, "worker-after-plain")


def test_the_health_check_command(slow_poll_stack: Stack) -> None:
    _only_worker(slow_poll_stack, "worker-health")
    check = [sys.executable, *WORKER, "--check"]
    assert subprocess.run(check, env=slow_poll_stack.env, cwd=ROOT, capture_output=True).returncode == 0
    no_worker = {**slow_poll_stack.env, "SSE_RELAY_KEY_PREFIX": "nobody-here"}
    assert subprocess.run(check, env=no_worker, cwd=ROOT, capture_output=True).returncode == 1
    # What the check reads lapses within seconds of the last worker's death (arq's default: an hour).
    with SyncRedis.from_url(slow_poll_stack.env["REDIS_URL"]) as queue:
        assert 0 < queue.ttl(worker_health_key(slow_poll_stack.prefix)) <= 16


async def test_a_worker_never_starts_a_second_copy_of_its_running_job(stack: Stack, redis: Redis) -> None:
    # The shared stack polls every 0.05 s. Its job's lease (arq's in-progress key) keeps disappearing, as after
    # a Redis outage longer than the lease: each poll finds the job queued and untaken, and this worker runs it.
    text = "".join(f"<{i:02d}>" for i in range(30))
    body = {"prompt": f"echo:{text}", "model": "demo@chunk=4,delay_ms=60"}
    async with stack.client() as client, client.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        events = await reader.take(1)
        for _ in range(75):  # 1.5 s of polls, each with the lease gone
            await redis.delete(in_progress_key(generation_id))
            await asyncio.sleep(0.02)
        events += await reader.take()
    assert_well_formed(events)
    assert [e.type for e in events].count("reset") == 0
    assert events[-1].type == "done" and text_of(events) == text

    def job_lines(marker: str) -> list[str]:
        lines = stack.processes["worker"].log.read_text().splitlines()
        return [line for line in lines if f"{generation_id}:{JOB_FUNCTION}" in line and marker in line]

    wait_for(lambda: bool(job_lines("←")), "arq to log the job's end")
    assert len(job_lines("→")) == 1, job_lines("→")
    attempt = await redis.hget(generation_keys(stack.prefix, generation_id).state, "attempt")  # type: ignore[misc]
    assert attempt == "1"
