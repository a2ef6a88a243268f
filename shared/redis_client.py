"""Redis connections for the queue (plain Redis, arq) and the streams (plain Redis or Cluster)."""

from __future__ import annotations

from typing import Any, cast

from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from shared.config import Settings
from shared.redis_packing import pack_with_hiredis

StreamsRedis = Redis | RedisCluster
# How long a command waits for a free connection of a bounded pool before it fails (ConnectionError): long
# enough for a burst (10,000 clients connecting, 5,000 POSTs at once) to be served in turn; at 10 s a few of
# those requests failed.
POOL_TIMEOUT_S = 30.0


def streams_client(settings: Settings, max_connections: int | None = None, **options: Any) -> StreamsRedis:
    """A client for generation streams; `socket_timeout` must outlive the longest blocking XREAD.

    `max_connections`: a bounded pool whose commands wait for a free connection instead of opening
    another, so a burst of requests cannot open dozens of connections (the API). None: redis-py's
    default pool, which opens one per concurrent command (the worker, whose commands must not wait for a
    connection; its publishes have their own, shared/redis_direct.py).
    A Cluster client keeps its own per-node pools either way.
    """
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
    # Every publish and read is a command: hiredis packs them for a fraction of redis-py's CPU.
    if max_connections is not None:
        return Redis.from_pool(pack_with_hiredis(bounded_pool(url, max_connections, **kwargs)))
    client = cast(Redis, Redis.from_url(url, **kwargs))
    pack_with_hiredis(client.connection_pool)
    return client


def bounded_pool(url: str, max_connections: int, **kwargs: Any) -> BlockingConnectionPool:
    """At most `max_connections` connections; a command waits up to POOL_TIMEOUT_S for one."""
    return BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, **kwargs)


def queue_client(settings: Settings, queue_name: str, max_connections: int) -> ArqRedis:
    """arq's client for enqueueing, on a bounded pool; connects lazily, so a Redis that is down does not
    stop the process from starting (/readyz reports it)."""
    pool = bounded_pool(settings.redis_url, max_connections, socket_connect_timeout=5, socket_timeout=10)
    client = ArqRedis(pool, default_queue_name=queue_name)
    # Its own pool, so closing the client closes the pool (as arq's create_pool does).
    client.auto_close_connection_pool = True
    return client
