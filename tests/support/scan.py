"""Everything a secret could leak into, as bytes or text: a Redis server's keys and values, a store's rows."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy import text

from shared.store.db import make_engine


async def redis_dump(redis_url: str) -> bytes:
    """Every key and value in the database of `redis_url`, raw bytes, whatever the type."""
    redis = Redis.from_url(redis_url)
    chunks: list[bytes] = []
    try:
        async for key in redis.scan_iter(count=1000):
            chunks.append(key)
            kind = (await redis.type(key)).decode()
            if kind == "string":
                chunks.append(await redis.get(key) or b"")
            elif kind == "hash":
                for field, value in (await redis.hgetall(key)).items():
                    chunks += [field, value]
            elif kind == "stream":
                for _, fields in await redis.xrange(key):
                    chunks += [b for pair in fields.items() for b in pair]
            elif kind == "zset":
                chunks += await redis.zrange(key, 0, -1)
            elif kind == "list":
                chunks += await redis.lrange(key, 0, -1)
            elif kind == "set":
                chunks += list(await redis.smembers(key))
    finally:
        await redis.aclose()
    return b"\n".join(chunks)


async def store_dump(database_url: str) -> str:
    """Every row of the result store, as text."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT * FROM generations"))).all()
    finally:
        await engine.dispose()
    return "\n".join(str(row) for row in rows)
