"""Worker -> Redis stream: batches a generation's pieces into few events and few round trips."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from shared import events
from shared.state import Generations, PublishResult, Status


class PublishRefused(Exception):
    """The stream took no more writes: the generation already ended, or this attempt is stale."""

    def __init__(self, result: PublishResult) -> None:
        super().__init__(result.outcome)
        self.result = result


class Publisher:
    """Sends the first piece at once (time to first token), then coalesces for `window_s` per write.

    Consecutive pieces of one kind merge into one event, so a fast provider costs far less than a
    Redis command per token. Cancellation requests ride back on every write's reply.
    """

    def __init__(self, generations: Generations, generation_id: str, attempt: int, window_s: float) -> None:
        self._generations = generations
        self._id = generation_id
        self._attempt = attempt
        self._window_s = window_s
        self._pending: list[tuple[Literal["content", "reasoning"], str]] = []
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.cancel_requested = False
        self.last_id: str | None = None
        self.last_write_at = 0.0

    async def add(self, kind: Literal["content", "reasoning"], text: str) -> None:
        self._raise_failure()
        if self._pending and self._pending[-1][0] == kind:
            self._pending[-1] = (kind, self._pending[-1][1] + text)
        else:
            self._pending.append((kind, text))
        due = self._last_flush + self._window_s
        if time.monotonic() >= due:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(due, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except BaseException as exc:  # surfaced to the job on its next add() or flush()
            self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        try:
            await self._write(_encode(batch))
        except PublishRefused:
            raise
        except BaseException:
            # Not written (Redis error, cancellation): keep the pieces so the next write carries them.
            self._pending = batch + self._pending
            raise

    async def publish(self, payload: str) -> None:
        """Pending pieces first, then `payload`, in one write."""
        await self._drain()
        await self.flush()
        await self._write([payload])

    async def settle(self) -> None:
        """Everything added so far is written (so `last_id` is the newest entry of this attempt)."""
        await self._drain(raise_failure=False)
        await self.flush()

    async def finish(
        self, payload: str, status: Status, fields: dict[str, str], terminal_id: str | None = None
    ) -> PublishResult:
        """The terminal event, after every pending piece, in one atomic write (`terminal_id`: its id).

        An earlier failed background write is not re-raised: its pieces are still pending, and the
        script refuses this write too if the stream is closed to this attempt.
        """
        await self._drain(raise_failure=False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch and terminal_id is not None:
            raise RuntimeError("settle() before finishing with a chosen terminal id")
        return await self._generations.publish(
            self._id, self._attempt, [*_encode(batch), payload], status, fields, terminal_id, first=self.last_id is None
        )

    async def _drain(self, raise_failure: bool = True) -> None:
        if self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
        if raise_failure:
            self._raise_failure()

    async def _write(self, payloads: list[str]) -> None:
        result = await self._generations.publish(self._id, self._attempt, payloads, first=self.last_id is None)
        self.last_write_at = time.monotonic()
        self.cancel_requested = self.cancel_requested or result.cancel_requested
        if result.outcome == "written":
            self.last_id = result.last_id
        if result.outcome != "written":
            raise PublishRefused(result)

    def close(self) -> None:
        """Stop the timer. An in-flight write is left to finish: cancelling it after Redis applied it would
        put its pieces back as pending, and the final write would send them twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _encode(batch: list[tuple[Literal["content", "reasoning"], str]]) -> list[str]:
    return [events.content(text) if kind == "content" else events.reasoning(text) for kind, text in batch]
