"""A TCP proxy for tests that can go silent: bytes already in flight vanish and nothing more is forwarded on
the connections open at that moment (a half-open connection, as after a lost peer or a dropped NAT entry),
while new connections are forwarded as usual."""

from __future__ import annotations

import asyncio
import contextlib

from shared.tasks import cancel_and_wait


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._silenced: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        """Silence every connection open now, in both directions, without closing it."""
        for silenced in self._silenced:
            silenced.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(*self._tasks)
        for writer in self._writers:
            writer.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers += [client_writer, upstream_writer]
        silenced = asyncio.Event()
        self._silenced.append(silenced)
        for source, sink in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.ensure_future(_pump(source, sink, silenced))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, silenced: asyncio.Event) -> None:
    try:
        while data := await source.read(65536):
            if silenced.is_set():
                continue  # swallowed: the other side never hears of it
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not silenced.is_set():
            with contextlib.suppress(Exception):
                sink.close()
