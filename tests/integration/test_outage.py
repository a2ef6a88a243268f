"""Redis taken away mid-generation (SIGKILL) and brought back: no process exits, the API answers 503 meanwhile,
and the generations in flight end with exactly one terminal event and the complete answer once Redis returns."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import OwnRedis, own_redis
from tests.support.sse import EventReader, Received, assert_well_formed, text_of
from tests.support.stack import Stack, running_stack

# 120 chunks 25 ms apart: ~3 s of streaming, long enough to take Redis away in the middle.
TEXT = "".join(f"{i:03d} outage ünïcode " for i in range(60))
BODY = {"prompt": f"echo:{TEXT}", "model": "demo@chunk=8,delay_ms=25"}
SHA256 = hashlib.sha256(TEXT.encode()).hexdigest()
OUTAGE_S = 3.0  # longer than the stack's 1 s job lease: the lease lapses while Redis is away


@pytest.fixture(scope="module")
def outage_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    with own_redis(tmp_path_factory.mktemp("outage-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def outage_stack(outage_redis: OwnRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(outage_redis.url, tmp_path_factory.mktemp("outage-stack")) as stack:
        yield stack


def _alive(stack: Stack) -> dict[str, bool]:
    return {name: process.popen.poll() is None for name, process in stack.processes.items()}


async def _until_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 30
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "the API never saw Redis come back"
        await asyncio.sleep(0.1)


async def test_generations_in_flight_finish_after_redis_comes_back(outage_stack: Stack, outage_redis: OwnRedis) -> None:
    async with outage_stack.client() as client:
        streams = [await client.send(client.build_request("POST", "/v1/generations", json=BODY), stream=True)
                   for _ in range(3)]  # fmt: skip
        readers = [EventReader(response) for response in streams]
        before = [await reader.take(3) for reader in readers]

        outage_redis.kill()
        during = await _during_outage(client)
        await asyncio.sleep(OUTAGE_S)
        assert _alive(outage_stack) == {"upstream": True, "worker": True, "api": True}
        outage_redis.restart()
        await _until_ready(client)

        for response, reader, first in zip(streams, readers, before, strict=True):
            events: list[Received] = first + await reader.take()
            await response.aclose()
            assert_well_formed(events)
            # One worker: its lease comes back with Redis, and it never starts a second copy of its own job.
            assert [e.type for e in events].count("reset") == 0
            assert events[-1].type == "done"
            assert text_of(events) == TEXT
            assert events[-1].data["data"]["sha256"] == SHA256
            view = (await client.get(f"/v1/generations/{response.headers['x-generation-id']}")).json()
            assert (view["status"], view["text"]) == ("done", TEXT)

        # New work is taken as before.
        after = await client.post("/v1/generations", json={**BODY, "prompt": "echo:after", "background": True})
        assert after.status_code == 202
    assert _alive(outage_stack) == {"upstream": True, "worker": True, "api": True}
    assert during == {"create": (503, "redis_unavailable"), "readyz": 503, "healthz": 200}
    logs = outage_stack.logs()
    assert "Redis is back" in logs
    assert "Traceback" not in logs


async def _during_outage(client: httpx.AsyncClient) -> dict[str, object]:
    """What callers get while Redis is away: quick JSON 503s (the client's 30 s timeout would fail a hang)."""
    created = await client.post("/v1/generations", json=BODY)
    return {
        "create": (created.status_code, created.json()["error"]["code"]),
        "readyz": (await client.get("/readyz")).status_code,
        "healthz": (await client.get("/healthz")).status_code,
    }


def test_killed_redis_keeps_what_it_acknowledged(outage_redis: OwnRedis, tmp_path: Path) -> None:
    """The premise of the test above: the test server persists every acknowledged write across a SIGKILL."""
    import redis

    client = redis.Redis.from_url(outage_redis.url)
    client.set("outage:probe", "kept")
    outage_redis.restart()
    client = redis.Redis.from_url(outage_redis.url)
    assert client.get("outage:probe") == b"kept"
    client.delete("outage:probe")
