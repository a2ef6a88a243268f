"""Worker -> Redis: one Lua script called on connections of its own, for the publish on every token's path."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError


class DirectScript:
    """EVALSHA of one script, sent and read on a connection taken from a free list of its own.

    redis-py's command path costs the worker about 65 µs of CPU per call (a pool lock taken twice, a probe of
    the connection before each use, the send wrapped in a task by `wait_for`); this path about 24. Each call
    in flight has its own connection, as with redis-py's unbounded pool, so calls never queue behind each
    other. The connections are the pool's kind (TCP, TLS, unix socket; hiredis packing), made from its
    settings. A call that fails or is cancelled mid-way drops its connection: a reply may still be on it.

    Only for scripts that are safe to repeat (the publish script drops a repeat by its sequence number): a call
    that finds its kept connection closed is sent again on a new one, as redis-py's pool would have found the
    closed connection before sending.
    """

    def __init__(self, pool: ConnectionPool, script: str, timeout_s: float) -> None:
        self._pool = pool
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts so
        self._timeout_s = timeout_s
        self._free: list[AbstractConnection] = []

    async def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await self._call("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or its scripts were flushed
            return await self._call("EVAL", self._script, len(keys), *keys, *args)

    async def _call(self, *command: str | int) -> Any:
        if self._free:
            try:
                return await self._on(self._free.pop(), command)
            except RedisConnectionError:
                # A kept connection found closed (Redis restarted, or dropped it while idle): the others are
                # likely closed too. Once more on a new one, which the script allows (see the class).
                await self._drop_free()
        return await self._on(self._connection(), command)

    async def _on(self, connection: AbstractConnection, command: tuple[str | int, ...]) -> Any:
        try:
            if not connection.is_connected:
                await self._connect(connection)
            await connection.send_packed_command(connection.pack_command(*command), check_health=False)
            # With an explicit timeout redis-py answers None instead of raising, and keeps the connection.
            reply = await connection.read_response(timeout=self._timeout_s)
            if reply is None:
                raise RedisTimeoutError(f"no reply from Redis in {self._timeout_s:g} s")
        except NoScriptError:
            self._free.append(connection)  # an error reply: the connection is clean
            raise
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        self._free.append(connection)
        return reply

    async def _connect(self, connection: AbstractConnection) -> None:
        # The handshake (HELLO, AUTH, CLIENT SETINFO) reads with the connection's own timeout, which is none.
        try:
            async with asyncio.timeout(self._timeout_s):
                await connection.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except TimeoutError:
            raise RedisTimeoutError(f"no handshake from Redis in {self._timeout_s:g} s") from None

    def _connection(self) -> AbstractConnection:
        # No socket timeout on the connection itself: with one, every send becomes a task (`wait_for`); the
        # read has its own timeout instead.
        kwargs = {**self._pool.connection_kwargs, "socket_timeout": None}
        return self._pool.connection_class(**kwargs)

    async def _drop_free(self) -> None:
        free, self._free = self._free, []
        for connection in free:
            await connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        await self._drop_free()
