"""Generation state and the API's stream readers on a real 3-master Redis Cluster, and the redis-py cluster
client behaviours they rely on (routing by slot, one pool per node, MOVED followed after a slot migration)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from api.stream_hub import StreamHub
from shared import events
from shared.config import Settings
from shared.errors import ErrorCode
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.keys import GENERATION_BUCKETS, generation_keys
from shared.redis_client import streams_client
from shared.state import Generations
from shared.streams import Entry, read_range
from tests.support.cluster import LocalCluster

Setup = tuple[Settings, RedisCluster, Generations]


@pytest.fixture
async def on_cluster(redis_cluster: LocalCluster, redis_url: str) -> AsyncIterator[Setup]:
    settings = Settings(
        redis_url=redis_url,
        streams_redis_url=redis_cluster.url,
        key_prefix="c" + uuid.uuid4().hex[:8],
        sse_read_block_ms=30_000,
    )
    client = streams_client(settings)
    assert isinstance(client, RedisCluster)
    try:
        yield settings, client, Generations(client, settings)
    finally:
        await client.aclose()


async def _running(generations: Generations) -> tuple[str, int]:
    generation_id = new_generation_id()
    request = StoredRequest(messages=[{"role": "user", "content": "x"}], model="m")
    await generations.create(generation_id, request, {"k": "v"}, "anonymous")
    return generation_id, (await generations.claim(generation_id)).attempt


async def _collect(hub: StreamHub, keys_events: str, generations: Generations, generation_id: str) -> list[Entry]:
    received: list[Entry] = []
    async for batch in hub.follow(generations.keys(generation_id), "0-0"):
        received += batch
    return received


def _owner(client: RedisCluster, key: str) -> int:
    """The port of the node the client would send `key` to."""
    node = client.get_node_from_key(key)
    assert node is not None
    return int(node.port)


def _blocked_readers(cluster: LocalCluster) -> int:
    """Connections blocked in a command (XREAD BLOCK), over every master."""
    total = 0
    for port in cluster.ports:
        clients = cluster.command(port, "CLIENT LIST")
        total += sum(1 for client in clients if client["cmd"] == "xread" and "b" in client["flags"])
    return total


async def test_every_generation_operation_works_on_a_cluster(on_cluster: Setup, redis_cluster: LocalCluster) -> None:
    settings, client, generations = on_cluster
    assert await generations.admit("caller-x", "g1")
    generation_id, attempt = await _running(generations)
    assert attempt == 1
    keys = generations.keys(generation_id)
    # Both keys in one slot, served by one master, which really holds them.
    slot = key_slot(keys.state.encode())
    assert key_slot(keys.events.encode()) == slot
    written = await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")])
    assert written.outcome == "written"
    owner = redis_cluster.node(redis_cluster.owner(slot))
    assert owner.exists(keys.state, keys.events) == 2
    assert (await generations.cancel(generation_id)) == ("cancelling", "running")
    state = await generations.get(generation_id)
    assert state is not None and state.cancel_requested and state.metadata == {"k": "v"}
    done = await generations.publish(generation_id, attempt, [events.error(ErrorCode.CANCELLED)], "cancelled")
    assert done.outcome == "written"
    assert (await generations.cancel(generation_id))[0] == "finished"
    assert [e for _, e in await read_range(client, keys.events)][-1].startswith('{"type":"error"')
    assert redis_cluster.command(redis_cluster.owner(slot), "TTL", keys.events) <= settings.finished_ttl_s
    await generations.release("caller-x", "g1")


async def test_generations_spread_over_the_masters(on_cluster: Setup, redis_cluster: LocalCluster) -> None:
    settings, _, _ = on_cluster
    slots = {key_slot(generation_keys(settings.key_prefix, new_generation_id()).state.encode()) for _ in range(500)}
    assert len(slots) == GENERATION_BUCKETS
    owners = {redis_cluster.owner(slot) for slot in slots}
    assert len(owners) == len(redis_cluster.ports)


async def test_the_cluster_client_routes_by_slot_with_one_pool_per_node(
    on_cluster: Setup, redis_cluster: LocalCluster
) -> None:
    _, client, generations = on_cluster
    ids = [(await _running(generations))[0] for _ in range(40)]
    nodes = {_owner(client, generations.keys(i).state) for i in ids}
    assert nodes == set(redis_cluster.ports)
    for port in redis_cluster.ports:
        node = client.get_node(host="127.0.0.1", port=port)
        assert node is not None
        # Sequential commands reuse one connection per node rather than opening one per command.
        assert len(node._connections) == 1


async def test_a_client_with_a_stale_slot_map_follows_moved_after_a_migration(
    on_cluster: Setup, redis_cluster: LocalCluster
) -> None:
    _, client, generations = on_cluster
    generation_id, attempt = await _running(generations)
    keys = generations.keys(generation_id)
    slot = key_slot(keys.state.encode())
    source = redis_cluster.owner(slot)
    target = next(port for port in redis_cluster.ports if port != source)
    assert _owner(client, keys.state) == source
    redis_cluster.migrate_slot(slot, target)
    try:
        # Scripts and plain commands of the client, whose map still says `source`, land on `target`.
        written = await generations.publish(generation_id, attempt, [events.content("after the move")])
        assert written.outcome == "written"
        assert (await generations.get(generation_id)) is not None
        assert _owner(client, keys.state) == target
        assert redis_cluster.node(target).exists(keys.state) == 1
    finally:
        redis_cluster.migrate_slot(slot, source)


async def test_one_blocking_reader_per_slot_in_use_however_many_clients(
    on_cluster: Setup, redis_cluster: LocalCluster
) -> None:
    settings, client, generations = on_cluster
    hub = StreamHub(settings, client, settings.reader_shards)
    hub.start()
    try:
        running = [await _running(generations) for _ in range(6)]
        readers = [
            asyncio.ensure_future(_collect(hub, "", generations, generation_id))
            for generation_id, _ in running
            for _ in range(5)
        ]
        slots = {key_slot(generations.keys(generation_id).events.encode()) for generation_id, _ in running}
        deadline = asyncio.get_running_loop().time() + 10
        while _blocked_readers(redis_cluster) < len(slots):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        # 30 clients of 6 generations: one blocked XREAD per slot those generations use, on its master.
        assert _blocked_readers(redis_cluster) == len(slots) == len(hub.shards)
        for generation_id, attempt in running:
            await generations.publish(generation_id, attempt, [events.content(generation_id)])
            await generations.publish(generation_id, attempt, [events.done(generation_id, "stop", None)], "done")
        results = await asyncio.wait_for(asyncio.gather(*readers), 10)
        for index, (generation_id, _) in enumerate(running):
            expected = await read_range(client, generations.keys(generation_id).events)
            assert all(result == expected for result in results[index * 5 : index * 5 + 5])
    finally:
        await hub.stop()


async def test_a_reader_follows_its_slot_to_another_master(on_cluster: Setup, redis_cluster: LocalCluster) -> None:
    settings, client, generations = on_cluster
    hub = StreamHub(settings, client, settings.reader_shards)
    hub.start()
    generation_id, attempt = await _running(generations)
    keys = generations.keys(generation_id)
    slot = key_slot(keys.events.encode())
    source = redis_cluster.owner(slot)
    target = next(port for port in redis_cluster.ports if port != source)
    try:
        received: list[Entry] = []

        async def watch() -> None:
            async for batch in hub.follow(keys, "0-0"):
                received.extend(batch)

        watcher = asyncio.ensure_future(watch())
        await generations.publish(generation_id, attempt, [events.content("before")])
        deadline = asyncio.get_running_loop().time() + 5
        while not received:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        redis_cluster.migrate_slot(slot, target)
        await generations.publish(generation_id, attempt, [events.content("after")])
        await generations.publish(generation_id, attempt, [events.done("beforeafter", "stop", None)], "done")
        await asyncio.wait_for(watcher, 20)
        assert received == await read_range(client, keys.events)
        assert hub.shards[0].reader is not None
        assert hub.shards[0].reader.connection_pool.connection_kwargs["port"] == target
    finally:
        await hub.stop()
        redis_cluster.migrate_slot(slot, source)
