"""Worker -> Redis stream: batches a generation's pieces into few events and few round trips."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from shared import events
from shared.retry import until_redis_answers
from shared.state import Generations, PublishResult, Status
from worker.metrics import TOKENS


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
    """Writes a generation's pieces to its stream as fast as Redis takes them, one write at a time.

    A piece goes out at once when no write is in flight; pieces that arrive during a write wait and go
    together in the next one, consecutive pieces of one kind merged into one event. So an idle system sends
    about one token per event with no added lag, and a busy worker or a slow Redis gets bigger batches (fewer
    Redis commands and SSE frames per token) without a timer: on a busy worker a write waits its turn to start
    (shared/redis_direct.py), and that wait is what grows batches. `min_interval_s` (0: off) spaces writes out
    further, at the cost of that much lag. Cancellation requests ride back on every write's reply.

    Each write carries a sequence number. While Redis is unreachable a write is retried until it gets through
    (pieces added meanwhile wait in memory); a write whose reply was lost, or that was cancelled mid-call, is
    repeated with the same number first, so nothing is written twice.
    """

    def __init__(self, generations: Generations, generation_id: str, attempt: int, min_interval_s: float = 0.0) -> None:
        self._generations = generations
        self._id = generation_id
        self._attempt = attempt
        self._min_interval_s = min_interval_s
        self._pending: list[tuple[Literal["content", "reasoning"], str]] = []
        self._next_write_at = 0.0
        self._pause: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._handover = False
        self._failure: BaseException | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._unacked: _Write | None = None
        self.cancel_requested = False
        self.last_id: str | None = None
        self.last_write_at = 0.0

    def add(self, kind: Literal["content", "reasoning"], text: str) -> None:
        """Queue a piece; it is written in the background (a refused write surfaces on a later call)."""
        if self._failure is not None:
            raise self._failure
        self._pending.append((kind, text))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_behind())

    async def _write_behind(self) -> None:
        """Write until nothing is pending: what arrived during one write is the next write. Ends early when
        a caller takes over (`_drain`), so that the last pieces ride with the caller's own payload."""
        try:
            async with self._lock:
                while self._pending and not self._handover:
                    if self._min_interval_s and not await self._waited_interval():
                        break
                    await self._repeat_unacked()
                    await self._write(self._take())
        except BaseException as exc:  # surfaced to the job on its next add() or flush()
            self._failure = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _waited_interval(self) -> bool:
        """Sleep out the minimum interval since the last write; False if a caller cut it short."""
        delay = self._next_write_at - _now()
        if delay <= 0:
            return True
        loop = asyncio.get_running_loop()
        self._pause = pause = loop.create_future()
        timer = loop.call_later(delay, _resolve, pause)
        try:
            await pause
        finally:
            timer.cancel()
            self._pause = None
        return not self._handover

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def flush(self) -> None:
        """Write everything added so far now."""
        await self._drain()
        async with self._lock:
            await self._repeat_unacked()
            if self._pending:
                await self._write(self._take())

    async def publish(self, payload: str) -> None:
        """Pending pieces first, then `payload`, in one write."""
        await self._drain()
        async with self._lock:
            await self._repeat_unacked()
            await self._write([*self._take(), payload])

    async def settle(self) -> None:
        """Everything added so far is written (so `last_id` is the newest entry of this attempt)."""
        await self._drain(raise_failure=False)
        async with self._lock:
            await self._repeat_unacked()
            if self._pending:
                await self._write(self._take())

    async def finish(
        self, payload: str, status: Status, fields: dict[str, str], terminal_id: str | None = None
    ) -> PublishResult:
        """The terminal event, after every pending piece, in one atomic write (`terminal_id`: its id).

        An earlier failed background write is not re-raised: its pieces are still unacknowledged or pending,
        and the script refuses this write too if the stream is closed to this attempt.
        """
        await self._drain(raise_failure=False)
        async with self._lock:
            refused = await self._repeat_unacked(raise_refusal=False)
            if refused is not None:
                return refused
            if self._pending and terminal_id is not None:
                raise RuntimeError("settle() before finishing with a chosen terminal id")
            return await self._send([*self._take(), payload], status, fields, terminal_id)

    async def _drain(self, raise_failure: bool = True) -> None:
        """Take over from the background writer: its write in flight ends, what is pending stays for us."""
        writer = self._writer
        if writer is not None:
            self._handover = True
            self._hurry()
            try:
                # wait(), not the task: its outcome is kept in _failure, and cancelling us must not cancel it.
                await asyncio.wait({writer})
            finally:
                self._handover = False
        if raise_failure:
            self._raise_failure()

    def _hurry(self) -> None:
        if self._pause is not None:
            _resolve(self._pause)

    def _take(self) -> list[str]:
        """The pending pieces as events, consecutive pieces of one kind joined into one."""
        batch, self._pending = self._pending, []
        if batch:
            TOKENS.inc(len(batch))  # once per write, not per piece: the counter's lock stays off the token path
        self._next_write_at = _now() + self._min_interval_s
        payloads: list[str] = []
        start = 0
        for end in range(1, len(batch) + 1):
            if end == len(batch) or batch[end][0] != batch[start][0]:
                text = "".join(piece for _, piece in batch[start:end])
                payloads.append(events.content(text) if batch[start][0] == "content" else events.reasoning(text))
                start = end
        return payloads

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
        """The attempt stopped adding; a write in flight finishes, and the ending writes what is pending."""

    def abandon(self) -> None:
        """The job was cancelled (shutdown, timeout): stop writing, even a write retrying through an outage.
        The next attempt starts with `reset`; what this one sent is never sent again."""
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _now() -> float:
    return asyncio.get_running_loop().time()
