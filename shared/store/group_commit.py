"""Between ResultStore.save and the database: saves that arrive during a write share the next transaction."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
_Entry = tuple[Item, asyncio.Future[Result]]

log = logging.getLogger("sse_relay.store")


class GroupCommit(Generic[Item, Result]):
    """Writes items through `write` (one transaction for a list of items, one result per item), one call at a time.

    An item submitted while nothing is being written goes at once, alone; items submitted during a write wait
    and go together in the next one (at most `limit`). So a lone save costs what it did, and a busy process
    commits many rows per transaction without a timer. When a shared write fails, each of its items is written
    again in a transaction of its own, so that each caller gets its own result or its own exception.

    A caller cancelled while its item waits for a write drops the item; once that write has begun, the item
    may still be written. The flusher task lives only while items are queued, on the loop that submitted the
    first of them: nothing is bound to a loop in between. One loop at a time: a store moves to another loop
    only once the first is closed (as tests do), and what that loop left is dropped: nobody waits for it there.
    """

    def __init__(self, write: Callable[[Sequence[Item]], Awaitable[list[Result]]], limit: int = 64) -> None:
        self._write = write
        self._limit = limit
        self._queue: deque[_Entry[Item, Result]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: list[_Entry[Item, Result]] = []

    @property
    def waiting(self) -> int:
        """Items queued for the next write (not the one in flight)."""
        return len(self._queue)

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if self._flusher is not None and (self._flusher.done() or self._flusher.get_loop() is not loop):
            self._abandon(self._flusher)
        self._queue.append((item, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
            self._flusher.add_done_callback(self._flusher_ended)
        # Awaited directly: cancelling the caller cancels only its future, which the flusher then skips.
        return await future

    async def _flush(self) -> None:
        while self._queue:
            self._inflight = [entry for entry in self._take() if not entry[1].done()]
            if self._inflight:
                await self._settle(self._inflight)
        self._inflight = []

    def _flusher_ended(self, task: asyncio.Task[None]) -> None:
        if self._flusher is task:
            self._abandon(task)

    def _abandon(self, flusher: asyncio.Task[None]) -> None:
        """After the flusher ended, or its loop was closed under it (submit can get here before the done
        callback runs). Normally nothing is left. If it was cancelled (its loop shutting down, even before its
        first step) or failed, no caller may wait forever, and each learns why. Items of another loop are
        dropped: nobody waits for them there."""
        cancelled = flusher.done() and flusher.cancelled()
        error = flusher.exception() if flusher.done() and not cancelled else None
        ended_badly = cancelled or error is not None
        here = asyncio.get_running_loop()
        for _, future in (*self._inflight, *(self._queue if ended_badly else ())):
            if not future.done() and future.get_loop() is here:
                _fail(future, error)
        self._inflight = []
        self._queue = deque() if ended_badly else deque(e for e in self._queue if e[1].get_loop() is here)
        self._flusher = None

    def _take(self) -> list[_Entry[Item, Result]]:
        return [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]

    async def _settle(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.warning("a transaction of %d saves failed (%s): each is written alone", len(batch), type(exc).__name__)
            # One bad row aborts the whole transaction: each row alone, so a failure reaches only its own caller.
            # Concurrently, as separate saves always went: a database that is down fails them all in one timeout.
            # A row whose own write ends in something else (a BaseException, a broken result) fails alone too.
            outcomes = await asyncio.gather(*(self._settle([entry]) for entry in batch), return_exceptions=True)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException) and not future.done():
                    _fail(future, outcome)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException | None) -> None:
    if error is None or isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)
