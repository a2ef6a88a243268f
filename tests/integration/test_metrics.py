"""Prometheus metrics after real traffic: the API's /metrics and each worker's WORKER_METRICS_PORT move by the
expected amounts for a generation, a resume (from Redis and from the store), a 204 at the terminal, a provider
error and a worker SIGKILLed mid-generation (a `reset`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from cli.embedded_redis import free_port
from demo.model import chunk_text
from shared.keys import generation_keys
from tests.support.hooks import KILL_MARKER
from tests.support.jobs import job_ended
from tests.support.metrics import Samples, scrape, total, value
from tests.support.sse import Received, read_events, text_of
from tests.support.stack import WORKER, Stack, _get_ok, running_stack, wait_for

WORKERS = ("worker", "worker-2")


@pytest.fixture(scope="module")
def metrics_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: one of its two workers is SIGKILLed.
    with running_stack(redis_url, tmp_path_factory.mktemp("metrics-stack")) as stack:
        stack.start_worker("worker-2")
        yield stack


@pytest.fixture
async def relay(metrics_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with metrics_stack.client() as client:
        yield client


def api_samples(stack: Stack) -> Samples:
    return scrape(f"{stack.api_url}/metrics")


def worker_samples(stack: Stack, alive_only: bool = False) -> dict[str, Samples]:
    return {
        name: scrape(stack.worker_metrics_url(name))
        for name in WORKERS
        if not alive_only or stack.processes[name].popen.poll() is None
    }


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def generate(relay: httpx.AsyncClient, body: Mapping[str, object]) -> tuple[str, list[Received]]:
    async with relay.stream("POST", "/v1/generations", json=body) as response:
        assert response.status_code == 200
        return response.headers["x-generation-id"], await read_events(response)


async def test_a_generation_moves_api_and_worker_counters(metrics_stack: Stack, relay: httpx.AsyncClient) -> None:
    api_before, workers_before = api_samples(metrics_stack), list(worker_samples(metrics_stack).values())
    text = "counted tokens " * 5
    generation_id, events = await generate(relay, {"prompt": f"echo:{text}", "model": "demo@chunk=4,delay_ms=2"})
    assert events[-1].type == "done" and text_of(events) == text
    await job_ended(metrics_stack.env["REDIS_URL"], generation_id)

    api_after = api_samples(metrics_stack)
    workers_after = list(worker_samples(metrics_stack).values())
    created = "sse_relay_generations_created_total"
    assert value(api_after, created) - value(api_before, created) == 1

    def moved(name: str, **labels: str) -> float:
        return total(workers_after, name, **labels) - total(workers_before, name, **labels)

    assert moved("sse_relay_generations_finished_total", status="done", code="none") == 1
    assert moved("sse_relay_tokens_total") == len(chunk_text(text, 4))
    assert moved("sse_relay_queue_wait_seconds_count") == 1
    assert moved("sse_relay_time_to_first_token_seconds_count") == 1
    # The first token came after the job started: TTFT's sum grew at least as much as queue wait's.
    assert moved("sse_relay_time_to_first_token_seconds_sum") >= moved("sse_relay_queue_wait_seconds_sum") > 0
    # The stream has ended: the open-streams gauge comes back down.
    await until(lambda: value(api_samples(metrics_stack), "sse_relay_sse_clients") == 0, "sse_clients back to 0")
    # The queue depth is polled, not read during the scrape; every worker exports it and its running jobs.
    for samples in workers_after:
        assert ("sse_relay_queue_depth", frozenset()) in samples
        assert ("sse_relay_worker_jobs_running", frozenset()) in samples


async def test_resumes_replays_and_204_are_counted(metrics_stack: Stack, relay: httpx.AsyncClient) -> None:
    text = "resume me " * 6
    generation_id, live = await generate(relay, {"prompt": f"echo:{text}", "model": "demo@chunk=5,delay_ms=1"})
    events_url = f"/v1/generations/{generation_id}/events"
    before = api_samples(metrics_stack)

    # From the start (no Last-Event-ID): not a resume, but every event already existed: replayed from Redis.
    async with relay.stream("GET", events_url) as response:
        everything = await read_events(response)
    assert [e.id for e in everything] == [e.id for e in live]
    # Resumed after the second event: the rest is replayed.
    async with relay.stream("GET", events_url, headers={"Last-Event-ID": live[1].id}) as response:
        rest = await read_events(response)
    assert [e.id for e in rest] == [e.id for e in live[2:]]
    # Resumed at the terminal event: 204.
    finished = await relay.get(events_url, headers={"Last-Event-ID": live[-1].id})
    assert finished.status_code == 204

    # The stream expired (deleted here): a resume is answered from the stored record, starting with `reset`.
    keys = generation_keys(metrics_stack.prefix, generation_id)
    async with Redis.from_url(metrics_stack.env["REDIS_URL"]) as redis:
        assert await redis.delete(keys.events, keys.state) == 2
    async with relay.stream("GET", events_url, headers={"Last-Event-ID": live[1].id}) as response:
        stored = await read_events(response)
    assert [e.type for e in stored] == ["reset", "content", "done"] and text_of(stored) == text

    after = api_samples(metrics_stack)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sse_relay_resumes_total") == 3
    assert moved("sse_relay_terminal_204_total") == 1
    assert moved("sse_relay_replayed_events_total", source="redis") == len(live) + len(live) - 2
    assert moved("sse_relay_replayed_events_total", source="store") == 3
    assert moved("sse_relay_resets_total", reason="replay_truncated") == 1
    assert moved("sse_relay_generations_created_total") == 0


async def test_a_provider_error_is_counted_by_code(metrics_stack: Stack, relay: httpx.AsyncClient) -> None:
    before = list(worker_samples(metrics_stack).values())
    generation_id, events = await generate(relay, {"prompt": "no key", "model": "status-401"})
    assert events[-1].type == "error" and events[-1].data["code"] == "upstream_auth"
    await job_ended(metrics_stack.env["REDIS_URL"], generation_id)
    after = list(worker_samples(metrics_stack).values())
    name = "sse_relay_generations_finished_total"
    labels = {"status": "error", "code": "upstream_auth"}
    assert total(after, name, **labels) - total(before, name, **labels) == 1
    # No first token: TTFT is not observed for a generation that produced none.
    ttft = "sse_relay_time_to_first_token_seconds_count"
    assert total(after, ttft) == total(before, ttft)


async def test_a_worker_killed_mid_generation_counts_a_retry_reset(
    metrics_stack: Stack, relay: httpx.AsyncClient
) -> None:
    before = worker_samples(metrics_stack)
    text = "a crash is counted " * 3 + KILL_MARKER
    body = {"prompt": f"echo:{text}", "model": "demo@chunk=8,delay_ms=5", "on_content": "kill_worker_once"}
    generation_id, events = await generate(relay, body)
    assert [e.type for e in events].count("reset") == 1 and text_of(events) == text
    killed_pid = int((Path(metrics_stack.env["SSE_RELAY_TEST_HOOK_DIR"]) / "killed").read_text())
    await job_ended(metrics_stack.env["REDIS_URL"], generation_id)

    # The killed worker's counters died with it; the survivor ran the second attempt.
    after = worker_samples(metrics_stack, alive_only=True)
    assert len(after) == 1 and metrics_stack.processes[next(iter(after))].popen.pid != killed_pid
    survivor = next(iter(after))

    def moved(name: str, **labels: str) -> float:
        return value(after[survivor], name, **labels) - value(before[survivor], name, **labels)

    assert moved("sse_relay_resets_total", reason="retry") == 1
    assert moved("sse_relay_retried_attempts_total") == 1
    assert moved("sse_relay_generations_finished_total", status="done", code="none") == 1
    # The second attempt does not observe queue wait or TTFT again: they are the first attempt's.
    assert moved("sse_relay_queue_wait_seconds_count") == 0
    assert moved("sse_relay_hook_calls_total", hook="on_content", outcome="ok") > 0


async def test_metrics_need_no_key_and_carry_no_secret_or_id(metrics_stack: Stack, relay: httpx.AsyncClient) -> None:
    generation_id, _ = await generate(relay, {"prompt": "echo:private words", "model": "demo@chunk=4"})
    await job_ended(metrics_stack.env["REDIS_URL"], generation_id)
    port = free_port()
    env = {**metrics_stack.env, "SSE_RELAY_API_KEYS": "metrics-key"}
    keyed = metrics_stack.start("api-keyed-metrics", ["-m", "uvicorn", "api.main:app", "--port", str(port)], env=env)
    try:
        wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/readyz"), "the keyed API", keyed)
        # Scraped like /healthz: a Prometheus server holds no caller key.
        texts = [httpx.get(f"http://127.0.0.1:{port}/metrics").text, httpx.get(f"{metrics_stack.api_url}/metrics").text]
        alive = [name for name in WORKERS if metrics_stack.processes[name].popen.poll() is None]
        texts += [httpx.get(metrics_stack.worker_metrics_url(name)).text for name in alive]
    finally:
        keyed.stop()
    for text in texts:
        assert "sse_relay_" in text
        for secret in (metrics_stack.secret, "metrics-key", generation_id, "private words"):
            assert secret not in text


async def test_a_worker_whose_metrics_port_is_taken_still_runs(metrics_stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**metrics_stack.env, "WORKER_METRICS_PORT": str(port), "WORKER_METRICS_HOST": "127.0.0.1"}
        worker = metrics_stack.start("worker-port-taken", WORKER, env=env)
        try:
            wait_for(lambda: "worker ready" in worker.log.read_text(errors="replace"), "the worker", worker)
            log = worker.log.read_text(errors="replace")
            assert f"worker metrics not served: port {port} is not available" in log
            assert worker.popen.poll() is None
        finally:
            worker.stop()
