"""Worker -> Redis: one Lua script called on connections of its own, for the publish on every token's path."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Turns of the event loop a call holds the gate for; the next call starts a turn after (see DirectScript).
TURNS_PER_CALL = 3


class DirectScript:
    """EVALSHA of one script, sent and read on a connection taken from a free list of its own.

    redis-py's command path cost the worker about twice as much CPU per call (the pool's lock, a probe of the
    connection before each use, the send wrapped in a task by `wait_for`). Each call in flight has its own
    connection, as with redis-py's unbounded pool. The connections are the pool's kind (TCP, TLS, unix socket;
    hiredis packing), made from its settings. A call that fails or is cancelled mid-way drops its connection:
    a reply may still be on it.

    Calls start one at a time, each holding a gate for `TURNS_PER_CALL` turns of the event loop, so starts
    are four turns apart (through redis-py's pool, about three). An idle loop turns in microseconds, so a lone
    call barely waits; a busy worker's turns are long, so calls queue for the gate, and each generation's next
    write carries everything that arrived meanwhile: that is what makes batches grow with load
    (worker/publisher.py). redis-py's pool did much the same by accident: it holds its lock across a probe of
    the connection that yields to the loop. Weaker brakes (none, a hold timed by the write's round trip, a gate
    held one turn) made batches at saturation 2 to 20 times smaller, and each extra event cost the API, Redis
    and the clients more than the cheaper write saved (BENCHMARKS.md).

    Only for scripts that are safe to repeat (the publish script drops a repeat by its sequence number): a call
    that finds its kept connection closed is sent again on a new one, as redis-py's pool would have found the
    closed connection before sending.
    """

    def __init__(self, pool: ConnectionPool, script: str, timeout_s: float) -> None:
        self._pool = pool
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()  # Redis's name for it
        self._timeout_s = timeout_s
        self._free: list[AbstractConnection] = []
        self._closed = False
        self._gate = asyncio.Lock()

    async def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        async with self._gate:
            for _ in range(TURNS_PER_CALL):
                await asyncio.sleep(0)
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
            # One timer for the handshake (if new), the send and the reply: the connection itself has none.
            async with asyncio.timeout(self._timeout_s):
                if not connection.is_connected:
                    await connection.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                await connection.send_packed_command(connection.pack_command(*command), check_health=False)
                reply = await connection.read_response()
        except ResponseError:  # an error reply (NOSCRIPT, a script's error), read whole: the connection is clean
            await self._keep(connection)
            raise
        except TimeoutError:  # asyncio.timeout's; redis-py raises its own, which callers already handle
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"no reply from Redis in {self._timeout_s:g} s") from None
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        await self._keep(connection)
        return reply

    async def _keep(self, connection: AbstractConnection) -> None:
        if self._closed:
            await connection.disconnect(nowait=True)
        else:
            self._free.append(connection)

    def _connection(self) -> AbstractConnection:
        # No socket timeout on the connection itself: with one, every send becomes a task (`wait_for`).
        kwargs = {**self._pool.connection_kwargs, "socket_timeout": None}
        return self._pool.connection_class(**kwargs)

    async def _drop_free(self) -> None:
        free, self._free = self._free, []
        for connection in free:
            await connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        """Closes the kept connections; a call still in flight closes its own when it ends."""
        self._closed = True
        await self._drop_free()
