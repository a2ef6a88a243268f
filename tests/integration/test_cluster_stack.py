"""The whole service with its streams on a real 3-master Redis Cluster and its queue on a plain Redis: two APIs,
two workers; resume on the other API, idempotency, admission, cancel, a worker SIGKILLed mid-stream, expiry
and replay from the store, keys spread over the masters."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from cli.embedded_redis import free_port
from shared.keys import active_key, generation_keys
from tests.support.cluster import LocalCluster
from tests.support.hooks import KILL_MARKER
from tests.support.sse import EventReader, assert_well_formed, read_events, text_of
from tests.support.stack import Stack, running_stack, wait_for

LONG = "".join(f"[{i:03d}·é]" for i in range(50))
SLOW = "demo@chunk=6,delay_ms=15"
FINISHED_TTL_S = 4


@pytest.fixture(scope="module")
def cluster_stack(
    redis_url: str, redis_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    logdir = tmp_path_factory.mktemp("cluster-stack")
    overrides = {"STREAMS_REDIS_URL": redis_cluster.url, "FINISHED_TTL_S": str(FINISHED_TTL_S)}
    with running_stack(redis_url, logdir, **overrides) as stack:
        stack.start_worker("worker-2")
        second = start_second_api(stack)
        yield stack, second


def start_second_api(stack: Stack) -> str:
    port = free_port()
    args = ["-m", "uvicorn", "api.main:app", "--port", str(port), "--timeout-graceful-shutdown", "3"]
    process = stack.start("api-2", args)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), "the second API", process)
    return url


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
async def apis(cluster_stack: tuple[Stack, str]) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    stack, second = cluster_stack
    async with stack.client() as first, httpx.AsyncClient(base_url=second, timeout=30) as other:
        yield first, other


@pytest.fixture
async def streams(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url.replace("+cluster", ""), decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_client_starts_on_one_api_and_resumes_on_the_other(
    apis: tuple[httpx.AsyncClient, httpx.AsyncClient],
    cluster_stack: tuple[Stack, str],
    streams: RedisCluster,
    redis: Redis,
) -> None:
    first_api, second_api = apis
    stack, _ = cluster_stack
    body = {"prompt": f"echo:{LONG}", "model": SLOW}
    async with first_api.stream("POST", "/v1/generations", json=body) as response:
        assert response.status_code == 200
        generation_id = response.headers["x-generation-id"]
        first = await read_events(response, limit=5)
    url = f"/v1/generations/{generation_id}/events"
    async with second_api.stream("GET", url, headers={"Last-Event-ID": first[-1].id}) as response:
        assert response.status_code == 200
        rest = await read_events(response)
    events = first + rest
    assert_well_formed(events)
    assert text_of(events) == LONG
    assert events[-1].data["data"]["sha256"] == hashlib.sha256(LONG.encode()).hexdigest()
    # The generation lives on the cluster, not on the queue's Redis.
    keys = generation_keys(stack.prefix, generation_id)
    assert await streams.exists(keys.state) == 1
    assert await redis.exists(keys.state, keys.events) == 0
    view = (await second_api.get(f"/v1/generations/{generation_id}")).json()
    assert (view["status"], view["text"]) == ("done", LONG)


async def test_idempotency_and_admission_on_the_cluster(
    apis: tuple[httpx.AsyncClient, httpx.AsyncClient], cluster_stack: tuple[Stack, str], streams: RedisCluster
) -> None:
    first_api, second_api = apis
    stack, _ = cluster_stack
    body = {"prompt": "echo:once", "background": True}
    headers = {"Idempotency-Key": f"cluster-{time.time()}"}
    created = await first_api.post("/v1/generations", json=body, headers=headers)
    again = await second_api.post("/v1/generations", json=body, headers=headers)
    assert (created.status_code, again.status_code) == (202, 200)
    generation_id = created.json()["id"]
    assert again.json()["id"] == generation_id
    conflict = await second_api.post("/v1/generations", json={**body, "prompt": "echo:other"}, headers=headers)
    assert conflict.status_code == 409
    async with second_api.stream("GET", f"/v1/generations/{generation_id}/events") as response:
        events = await read_events(response)
    assert text_of(events) == "once"
    # Admitted while it ran, released with its terminal event.
    active = active_key(stack.prefix, "anonymous")
    await _until(lambda: _released(streams, active, generation_id), "the admission slot to be released")


async def _released(streams: RedisCluster, active: str, generation_id: str) -> bool:
    score: float | None = await streams.zscore(active, generation_id)
    return score is None


async def test_cancel_on_the_cluster(apis: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    first_api, second_api = apis
    body = {"prompt": "echo:" + "x" * 400, "model": "demo@chunk=1,delay_ms=20"}
    async with first_api.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        first = await reader.take(3)
        assert (await second_api.post(f"/v1/generations/{generation_id}/cancel")).status_code == 202
        rest = await reader.take()
    events = first + rest
    assert_well_formed(events)
    assert (events[-1].type, events[-1].data["code"]) == ("error", "cancelled")
    assert (await first_api.get(f"/v1/generations/{generation_id}")).json()["status"] == "cancelled"


async def test_expired_generation_is_replayed_from_the_store(
    apis: tuple[httpx.AsyncClient, httpx.AsyncClient], cluster_stack: tuple[Stack, str], streams: RedisCluster
) -> None:
    first_api, second_api = apis
    stack, _ = cluster_stack
    created = (await first_api.post("/v1/generations", json={"prompt": "echo:kept", "background": True})).json()
    async with first_api.stream("GET", created["events_url"]) as response:
        live = await read_events(response)
    keys = generation_keys(stack.prefix, created["id"])

    async def expired() -> bool:
        remaining: int = await streams.exists(keys.state, keys.events)
        return remaining == 0

    await _until(expired, "the cluster to expire the finished generation", timeout=FINISHED_TTL_S + 10)
    view = (await second_api.get(f"/v1/generations/{created['id']}")).json()
    assert (view["status"], view["text"]) == ("done", "kept")
    async with second_api.stream("GET", f"/v1/generations/{created['id']}/events") as response:
        replay = await read_events(response)
    assert text_of(replay) == "kept" and replay[-1].id == live[-1].id
    resumed = await second_api.get(f"/v1/generations/{created['id']}/events", headers={"Last-Event-ID": live[-1].id})
    assert resumed.status_code == 204


async def test_keys_spread_over_every_master(
    apis: tuple[httpx.AsyncClient, httpx.AsyncClient], cluster_stack: tuple[Stack, str], redis_cluster: LocalCluster
) -> None:
    first_api, second_api = apis
    stack, _ = cluster_stack
    holders = set()
    for index in range(40):
        api = first_api if index % 2 else second_api
        created = (await api.post("/v1/generations", json={"prompt": f"echo:{index}", "background": True})).json()
        # Its state is on the master that owns its slot (checked at once: finished keys expire after 4 s here).
        state = generation_keys(stack.prefix, created["id"]).state
        owner = redis_cluster.owner(key_slot(state.encode()))
        assert redis_cluster.command(owner, "EXISTS", state) == 1
        holders.add(owner)
    assert holders == set(redis_cluster.ports)


async def test_a_worker_killed_mid_stream_restarts_the_text_with_reset(
    apis: tuple[httpx.AsyncClient, httpx.AsyncClient], cluster_stack: tuple[Stack, str]
) -> None:
    first_api, second_api = apis
    stack, _ = cluster_stack
    text = "before the crash " * 6 + KILL_MARKER + " after the crash" * 6
    body = {"prompt": f"echo:{text}", "model": "demo@chunk=6,delay_ms=10", "on_content": "kill_worker_once"}
    async with first_api.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        first = await read_events(response, limit=2)
    async with second_api.stream(
        "GET", f"/v1/generations/{generation_id}/events", headers={"Last-Event-ID": first[-1].id}
    ) as response:
        rest = await read_events(response)
    killed = int((Path(stack.env["SSE_RELAY_TEST_HOOK_DIR"]) / "killed").read_text())
    assert any(p.popen.pid == killed and p.popen.poll() is not None for p in stack.processes.values())
    events = first + rest
    assert_well_formed(events)
    kinds = [e.type for e in events]
    assert kinds.count("reset") == 1 and kinds[-1] == "done"
    assert text_of(events) == text
    stack.start_worker("worker-3")


async def test_a_slot_migrating_mid_stream_loses_no_text(
    apis: tuple[httpx.AsyncClient, httpx.AsyncClient], cluster_stack: tuple[Stack, str], redis_cluster: LocalCluster
) -> None:
    """A reshard moves a streaming generation's slot to another master, in the steps `redis-cli --cluster
    reshard` takes (MIGRATING/IMPORTING, keys moved, slot handed over). While keys are in flight the old owner
    answers ASK and then MOVED: the worker's writes and both APIs' readers must follow, and the client gets the
    whole text exactly (after a `reset` at most)."""
    first_api, second_api = apis
    stack, _ = cluster_stack
    async with first_api.stream("POST", "/v1/generations", json={"prompt": f"echo:{LONG}", "model": SLOW}) as response:
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        first = await reader.take(3)
        keys = generation_keys(stack.prefix, generation_id)
        slot = key_slot(keys.state.encode())
        source = redis_cluster.owner(slot)
        target = next(port for port in redis_cluster.ports if port != source)
        redis_cluster.begin_migration(slot, target)
        redis_cluster.move_keys(slot, target)
        moved, asks = _importing_length(redis_cluster, target, keys.events), _ask_replies(redis_cluster, source)

        async def worker_met_the_migration() -> bool:
            # Either the writes went through to the importing node, or they kept being redirected there for a
            # while (redis-py cannot always follow ASK: shared/retry.py); both must end without a lost character.
            written = _importing_length(redis_cluster, target, keys.events) > moved + 2
            return written or _ask_replies(redis_cluster, source) > asks + 20

        await _until(worker_met_the_migration, "the worker's writes to meet the migrating slot")
        redis_cluster.move_keys(slot, target)
        redis_cluster.finish_migration(slot, target)
        # Once the slot is handed over, the worker's writes and the API's reader (held off by ASK meanwhile)
        # follow MOVED to the new owner.
        rest = await reader.take()
    events = first + rest
    assert_well_formed(events)
    kinds = [e.type for e in events]
    assert kinds[-1] == "done" and kinds.count("reset") <= 1
    assert text_of(events) == LONG
    async with second_api.stream(
        "GET", f"/v1/generations/{generation_id}/events", headers={"Last-Event-ID": first[-1].id}
    ) as response:
        resumed = await read_events(response)
    assert text_of(first + resumed) == LONG


def _importing_length(cluster: LocalCluster, port: int, key: str) -> int:
    """XLEN of a stream on the node importing its slot (which answers for it only after ASKING)."""
    with SyncRedis(host="127.0.0.1", port=port, single_connection_client=True) as node:
        cast(Any, node).execute_command("ASKING")
        return int(node.xlen(key))


def _ask_replies(cluster: LocalCluster, port: int) -> int:
    """How many ASK redirections a node has answered (Redis counts error replies by their first word)."""
    stats = cluster.command(port, "INFO", "errorstats")
    return int(stats.get("errorstat_ASK", {}).get("count", 0))
