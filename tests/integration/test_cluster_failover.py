"""A master failover under a streaming generation: a real 3-master Redis Cluster with a replica each holds the
streams, the queue is on a plain Redis; the replica of the master owning the generation's slot takes over
(CLUSTER FAILOVER) mid-stream, and the client still gets the whole text exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.crc import key_slot

from shared.keys import generation_keys
from tests.support.cluster import LocalCluster, local_cluster
from tests.support.sse import EventReader, assert_well_formed, read_events, text_of
from tests.support.stack import Stack, running_stack

LONG = "".join(f"<{i:03d}·ü>" for i in range(60))


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("replicated-cluster"), replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def failover_stack(
    redis_url: str, replicated: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logdir = tmp_path_factory.mktemp("failover-stack")
    with running_stack(redis_url, logdir, STREAMS_REDIS_URL=replicated.url) as stack:
        yield stack


@pytest.fixture
async def api(failover_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with failover_stack.client() as client:
        yield client


async def test_a_master_failover_mid_stream_loses_no_text(
    api: httpx.AsyncClient, failover_stack: Stack, replicated: LocalCluster
) -> None:
    body = {"prompt": f"echo:{LONG}", "model": "demo@chunk=6,delay_ms=15"}
    async with api.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        first = await reader.take(3)
        keys = generation_keys(failover_stack.prefix, generation_id)
        old_master = replicated.owner(key_slot(keys.state.encode()))
        new_master = replicated.fail_over(old_master)
        assert replicated.owner(key_slot(keys.state.encode())) == new_master
        rest = await reader.take()
    events = first + rest
    assert_well_formed(events)
    kinds = [e.type for e in events]
    assert kinds[-1] == "done" and kinds.count("reset") <= 1
    assert text_of(events) == LONG
    # The stream now lives on the promoted master, and a resume from the first events reads it there.
    assert replicated.command(new_master, "EXISTS", keys.events) == 1
    async with api.stream(
        "GET", f"/v1/generations/{generation_id}/events", headers={"Last-Event-ID": first[-1].id}
    ) as response:
        resumed = await read_events(response)
    assert text_of(first + resumed) == LONG
