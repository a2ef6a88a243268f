"""Redis connections whose commands hiredis packs (C): used by every streams client, the API's and the worker's."""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)

try:
    from hiredis import pack_command as hiredis_pack_command
except ImportError:  # redis-py's own packing then: correct, only slower
    hiredis_pack_command = None  # type: ignore[assignment]


class _HiredisPacking(AbstractConnection):
    """Commands packed by hiredis instead of redis-py's per-argument Python loop: packing was the largest part
    of the API's CPU at 1,000 busy streams (a reader's XREAD names every followed key), and 13 % of the
    worker's in `cost` (py-spy, BENCHMARKS.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # Like redis-py's: a command name of two words ("CLIENT ID") is two arguments.
        name = args[0].split() if isinstance(args[0], (str, bytes)) else [args[0]]
        try:
            return [hiredis_pack_command((*name, *args[1:]))]
        except TypeError:
            # An argument redis-py refuses too (None, a bool): its own packing raises its DataError.
            return super().pack_command(*args)


class _PackedConnection(_HiredisPacking, Connection):
    pass


class _PackedSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
}


def pack_with_hiredis(pool: ConnectionPool) -> ConnectionPool:
    """The pool's connections, of the kind its URL chose (TCP, TLS, unix socket), pack with hiredis when it is
    installed. Set on the new pool rather than passed to `from_url`, which replaces a given `connection_class`
    with the URL's own for `rediss://` and `unix://`. Before its first connection: it makes them all."""
    if hiredis_pack_command is not None:
        pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return pool
