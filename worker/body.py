"""A provider response whose body a task of its own reads as it arrives (made by worker/upstream.py's open_stream).

aiohttp, the SDK transport the worker uses, discards body bytes it has received but not yet handed over when the
connection then fails: a worker that is busy (an on_content hook, a thousand streams, a request sent before its
job runs) would lose an answer's last pieces, or a complete answer whose connection closed uncleanly after
`[DONE]`. So a reader task waits on the body at all times and moves each chunk into a queue at once, up to
`_HELD_MAX` bytes: beyond that it waits, and aiohttp's own buffer and TCP slow the provider down as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from shared.tasks import cancel_and_wait

_END = None
# What one generation's reader holds for a worker that is behind (a slow on_content hook): tens of pieces'
# worth is plenty to ride out a busy moment; an answer held whole would cost megabytes per generation.
_HELD_MAX = 1 << 20


class Opened:
    """The provider's answer as sent: `chunks()` yields its body, then raises the body's failure, if any."""

    def __init__(self, manager: Any, response: Any) -> None:
        self._manager = manager  # the SDK's response context: its exit closes the response
        self._chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._held = 0
        self._room = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read(response.http_response.aiter_bytes()))

    async def _read(self, body: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in body:
                self._chunks.put_nowait(chunk)
                self._held += len(chunk)
                while self._held > _HELD_MAX:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:
            self._chunks.put_nowait(exc)
        else:
            self._chunks.put_nowait(_END)

    @property
    def held(self) -> int:
        """Bytes read from the provider and not yet taken by `chunks()`."""
        return self._held

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            self._held -= len(item)
            self._room.set()
            yield item

    async def rest(self, within_s: float) -> None:
        """Give the body `within_s` to end by itself (normally nothing follows `[DONE]`), so that its connection
        can be reused; `aclose` drops a connection that is still sending."""
        await asyncio.wait([self._reader], timeout=within_s)

    async def aclose(self) -> None:
        try:
            await cancel_and_wait(self._reader)
        finally:  # also when this close is itself cancelled: the response must not stay open
            await self._manager.__aexit__(None, None, None)
