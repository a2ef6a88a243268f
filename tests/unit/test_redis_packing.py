"""hiredis packing for the streams clients: the same bytes as redis-py's own packing, the same errors, and every
plain-Redis streams client (the worker's publisher, the API's pool) uses it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from shared.config import Settings
from shared.redis_client import streams_client
from shared.redis_packing import _HiredisPacking, _PackedConnection

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 3, "k:1", b"k:2", "k:3", "naïve café 你好 🌍", 17, 1764600000.123456, 0.1, -5),
    ("CLIENT ID",),
    ("CLIENT UNBLOCK", 42, "ERROR"),
    ("XREAD", "BLOCK", 5000, "STREAMS", "s:1", "s:2", "0-0", "1764600000000-3"),
    ("SET", "k", b"\x00\xff raw bytes", "PX", 100),
    ("HSET", "h", "empty", ""),
]


def packed(connection: Connection, *args: Any) -> bytes:
    return b"".join(connection.pack_command(*args))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packs_the_same_bytes_as_redis_py(command: tuple[Any, ...]) -> None:
    assert packed(_PackedConnection(), *command) == packed(Connection(), *command)


@pytest.mark.parametrize("bad", [None, True, bytearray(b"x")])
def test_an_argument_redis_py_refuses_is_refused_with_its_error(bad: Any) -> None:
    with pytest.raises(DataError):
        _PackedConnection().pack_command("SET", "k", bad)


@pytest.mark.parametrize("max_connections", [None, 8])
@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://h:1/0", Connection),
        ("rediss://h:1/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_transport_packs_with_hiredis_and_keeps_its_connection_kind(
    url: str, kind: type[Connection], max_connections: int | None
) -> None:
    client = streams_client(Settings.model_validate({"REDIS_URL": url}), max_connections=max_connections)
    assert isinstance(client, Redis)
    made = client.connection_pool.connection_class  # what the pool makes its connections of
    assert issubclass(made, _HiredisPacking) and issubclass(made, kind)
    if kind is Connection:
        assert not issubclass(made, (SSLConnection, UnixDomainSocketConnection))


@pytest.mark.parametrize("max_connections", [None, 8])
async def test_streams_clients_pack_with_hiredis_and_talk_to_redis(redis_url: str, max_connections: int | None) -> None:
    settings = Settings.model_validate({"REDIS_URL": redis_url})
    client = streams_client(settings, max_connections=max_connections)
    assert isinstance(client, Redis)
    try:
        assert client.connection_pool.connection_class is _PackedConnection
        key = "packing-test:naïve"
        assert await client.set(key, "café 🌍", px=10_000)
        assert await client.get(key) == "café 🌍"
        reply = client.eval("return ARGV[1] .. KEYS[1]", 1, key, 3.5)  # type: ignore[arg-type]
        assert await cast(Awaitable[str], reply) == "3.5" + key
    finally:
        await client.aclose()
