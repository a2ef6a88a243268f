"""A TCP switch for tests: one local port in front of several API instances, pointed at one of them at a
time; switching cuts the open connections, as a load balancer does when an instance goes away."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cli.embedded_redis import free_port


class Switch:
    """Runs in its own thread and event loop, so a blocking client in the test's thread can use it."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.connections = 0  # accepted so far: a test can see that the client really reconnected
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def switch_to(self, target_port: int) -> None:
        """Send new connections to `target_port` and cut every open one."""
        asyncio.run_coroutine_threadsafe(self._switch(target_port), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        await self._switch(self.target_port)
        # Cut connections end their pipes by themselves (no cancel: asyncio's server callback would report it).
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _switch(self, target_port: int) -> None:
        self.target_port = target_port
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()  # the target is down: the client sees a reset, as behind a real LB
            return
        self._writers.update({client_writer, upstream_writer})
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        self._writers.difference_update({client_writer, upstream_writer})


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.transport.abort()


@contextmanager
def running_switch(target_port: int) -> Iterator[Switch]:
    switch = Switch(target_port)
    switch.start()
    try:
        yield switch
    finally:
        switch.stop()
