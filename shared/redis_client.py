"""Redis connections for the queue (plain Redis, arq) and the streams (plain Redis or Cluster)."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared.config import Settings

StreamsRedis = Redis | RedisCluster


def streams_client(settings: Settings, **options: Any) -> StreamsRedis:
    """A client for generation streams; `socket_timeout` must outlive the longest blocking XREAD."""
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": settings.sse_read_block_ms / 1000 + 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    kwargs.update(options)
    url = settings.streams_url
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return cast(RedisCluster, RedisCluster.from_url(url.replace("+cluster", "", 1), **kwargs))
    return cast(Redis, Redis.from_url(url, **kwargs))
