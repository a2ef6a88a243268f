"""Session fixtures: a real Redis for every test that needs one, and the running stack for end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.cluster import LocalCluster, local_cluster
from tests.support.services import TEST_DB, real_redis
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    with real_redis() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(redis_base_url: str) -> str:
    return f"{redis_base_url}/{TEST_DB}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3-master Redis Cluster, for the generations' streams and state."""
    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_url, tmp_path_factory.mktemp("stack-logs")) as running:
        yield running


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client() as http:
        yield http


@pytest.fixture
async def upstream(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.upstream_url, timeout=10) as http:
        yield http
