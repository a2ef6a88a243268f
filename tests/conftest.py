"""Session fixtures: a real Redis for every test that needs one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support.services import TEST_DB, real_redis


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    with real_redis() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(redis_base_url: str) -> str:
    return f"{redis_base_url}/{TEST_DB}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
