"""Worker -> Redis stream: batches a generation's pieces into few events and few round trips."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from shared import events
from shared.retry import until_redis_answers
from shared.state import Generations, PublishResult, Status


class PublishRefused(Exception):
    """The stream took no more writes: the generation already ended, or this attempt is stale."""

    def __init__(self, result: PublishResult) -> None:
        super().__init__(result.outcome)
        self.result = result


@dataclass(frozen=True, slots=True)
class _Write:
    """One call of the publish script, kept until its reply arrives so that it can be repeated as it was."""

    seq: int
    payloads: list[str]
    first: bool
    status: Status | None = None
    fields: dict[str, str] | None = None
    terminal_id: str | None = None


class Publisher:
    """Sends the first piece at once (time to first token), then coalesces for `window_s` per write.

    Consecutive pieces of one kind merge into one event, so a fast provider costs far less than a
    Redis command per token. Cancellation requests ride back on every write's reply.

    Writes go out one at a time, in order, each with a sequence number. While Redis is unreachable a write
    is retried until it gets through (pieces added meanwhile wait in memory); a write whose reply was lost,
    or that was cancelled mid-call, is repeated with the same number first, so nothing is written twice.
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
        self._lock = asyncio.Lock()
        self._seq = 0
        self._unacked: _Write | None = None
        self.cancel_requested = False
        self.last_id: str | None = None
        self.last_write_at = 0.0

    async def add(self, kind: Literal["content", "reasoning"], text: str) -> None:
        self._raise_failure()
        if self._pending and self._pending[-1][0] == kind:
            self._pending[-1] = (kind, self._pending[-1][1] + text)
        else:
            self._pending.append((kind, text))
        if self._lock.locked():
            return  # the write in flight schedules the next one when it ends
        if _now() >= self._last_flush + self._window_s:
            await self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and self._pending:
            due = max(self._last_flush + self._window_s, _now())
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

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def flush(self) -> None:
        self._cancel_timer()
        async with self._lock:
            await self._repeat_unacked()
            if self._pending:
                await self._write(self._take())
        self._schedule()  # pieces added while this write was in flight

    async def publish(self, payload: str) -> None:
        """Pending pieces first, then `payload`, in one write."""
        await self._drain()
        self._cancel_timer()
        async with self._lock:
            await self._repeat_unacked()
            await self._write([*self._take(), payload])

    async def settle(self) -> None:
        """Everything added so far is written (so `last_id` is the newest entry of this attempt)."""
        await self._drain(raise_failure=False)
        await self.flush()

    async def finish(
        self, payload: str, status: Status, fields: dict[str, str], terminal_id: str | None = None
    ) -> PublishResult:
        """The terminal event, after every pending piece, in one atomic write (`terminal_id`: its id).

        An earlier failed background write is not re-raised: its pieces are still unacknowledged or pending,
        and the script refuses this write too if the stream is closed to this attempt.
        """
        await self._drain(raise_failure=False)
        self._cancel_timer()
        async with self._lock:
            refused = await self._repeat_unacked(raise_refusal=False)
            if refused is not None:
                return refused
            if self._pending and terminal_id is not None:
                raise RuntimeError("settle() before finishing with a chosen terminal id")
            return await self._send([*self._take(), payload], status, fields, terminal_id)

    async def _drain(self, raise_failure: bool = True) -> None:
        if self._flushing is not None and not self._flushing.done():
            # wait(), not the task itself: its outcome is kept in _failure, and cancelling us must not cancel it.
            await asyncio.wait({self._flushing})
        if raise_failure:
            self._raise_failure()

    def _take(self) -> list[str]:
        batch, self._pending = self._pending, []
        self._last_flush = _now()
        return [events.content(text) if kind == "content" else events.reasoning(text) for kind, text in batch]

    async def _repeat_unacked(self, raise_refusal: bool = True) -> PublishResult | None:
        """The write whose reply never came goes again, unchanged; the script drops it if it was applied."""
        write = self._unacked
        if write is None:
            return None
        result = await self._call(write)
        if result.outcome != "written" and raise_refusal:
            raise PublishRefused(result)
        return None if result.outcome == "written" else result

    async def _write(self, payloads: list[str]) -> None:
        result = await self._send(payloads)
        if result.outcome != "written":
            raise PublishRefused(result)

    async def _send(
        self,
        payloads: list[str],
        status: Status | None = None,
        fields: dict[str, str] | None = None,
        terminal_id: str | None = None,
    ) -> PublishResult:
        self._seq += 1
        write = _Write(self._seq, payloads, self.last_id is None, status, fields, terminal_id)
        self._unacked = write
        return await self._call(write)

    async def _call(self, write: _Write) -> PublishResult:
        result = await until_redis_answers(
            lambda: self._generations.publish(
                self._id,
                self._attempt,
                write.payloads,
                write.status,
                write.fields,
                write.terminal_id,
                first=write.first,
                seq=write.seq,
            ),
            f"publishing to {self._id}",
        )
        self._unacked = None
        self.last_write_at = _now()
        self.cancel_requested = self.cancel_requested or result.cancel_requested
        if result.outcome == "written":
            self.last_id = result.last_id
        return result

    def close(self) -> None:
        """Stop the timer; an in-flight write is left to finish (its job is ending anyway)."""
        self._cancel_timer()

    def abandon(self) -> None:
        """The job was cancelled (shutdown, timeout): stop writing, even a write retrying through an outage.
        The next attempt starts with `reset`; what this one sent is never sent again."""
        self._cancel_timer()
        if self._flushing is not None:
            self._flushing.cancel()


def _now() -> float:
    return asyncio.get_running_loop().time()
