"""GroupCommit's flusher under the ways it can end: back-to-back saves, cancelled before its first step, its loop
closed with a save pending, a failing write. No caller may wait forever or get another caller's outcome."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from shared.store.group_commit import GroupCommit


class Writes:
    """A write function that records its batches; `gate` (when set) holds each write until it is opened."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.started = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        if list(items) == [-9]:
            raise asyncio.CancelledError  # what a driver interrupted under it raises: not an Exception
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(3):  # a write takes a few turns of the loop, as a database's does
            await asyncio.sleep(0)
        if any(item < 0 for item in items):
            raise ValueError(f"bad item in {list(items)}")
        return [item * 10 for item in items]


async def test_back_to_back_saves_of_one_caller_are_both_written() -> None:
    # The second submit runs after the first caller wakes and before the finished flusher's done callback.
    writes = Writes()
    commit = GroupCommit(writes)
    async with asyncio.timeout(5):  # not wait_for: its task would let the done callback run first
        for item in range(5):
            assert await commit.submit(item) == item * 10
    assert writes.batches == [[0], [1], [2], [3], [4]]


async def test_a_flusher_cancelled_before_its_first_step_fails_its_callers_and_the_next_save_works() -> None:
    commit = GroupCommit(Writes())
    waiter = asyncio.ensure_future(commit.submit(1))
    await asyncio.sleep(0)  # the waiter has queued its item and started the flusher, which has not run yet
    assert commit._flusher is not None
    commit._flusher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
    assert await asyncio.wait_for(commit.submit(2), 5) == 20


async def test_a_write_that_breaks_the_flusher_reaches_its_callers_as_its_own_error() -> None:
    async def wrong_count(items: Sequence[int]) -> list[int]:
        return []  # one result too few: the flusher itself fails

    commit = GroupCommit(wrong_count)
    with pytest.raises(ValueError):
        await asyncio.wait_for(commit.submit(1), 5)
    assert commit._flusher is None


async def test_a_failed_shared_write_is_logged_and_each_item_is_written_alone(caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()
    writes = Writes(gate)
    commit = GroupCommit(writes)
    first = asyncio.ensure_future(commit.submit(1))
    await writes.started.wait()  # [1] is being written: the next three wait and go together
    rest = [asyncio.ensure_future(commit.submit(item)) for item in (2, -3, 4)]
    await asyncio.sleep(0)
    gate.set()
    with caplog.at_level(logging.WARNING, logger="sse_relay.store"):
        outcomes = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 5)
    assert outcomes[:2] == [10, 20] and isinstance(outcomes[2], ValueError) and outcomes[3] == 40
    assert writes.batches == [[1], [2, -3, 4], [2], [-3], [4]]
    assert "a transaction of 3 saves failed (ValueError)" in caplog.text


def test_a_loop_closed_with_a_save_pending_does_not_stall_the_next_loop() -> None:
    commit = GroupCommit(Writes())
    stuck = Writes(asyncio.Event())  # never opened: the first loop's save stays in flight
    commit._write = stuck
    loop = asyncio.new_event_loop()
    with pytest.raises(TimeoutError):
        loop.run_until_complete(asyncio.wait_for(commit.submit(1), 0.05))
    loop.close()  # without finishing the flusher: its done callback never runs
    commit._write = Writes()
    assert asyncio.run(asyncio.wait_for(commit.submit(2), 5)) == 20


async def test_a_row_whose_own_write_is_interrupted_fails_alone() -> None:
    gate = asyncio.Event()
    writes = Writes(gate)
    commit = GroupCommit(writes)
    first = asyncio.ensure_future(commit.submit(1))
    await writes.started.wait()
    rest = [asyncio.ensure_future(commit.submit(item)) for item in (2, -9, 4)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 5)
    assert outcomes[:2] == [10, 20] and outcomes[3] == 40
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert await asyncio.wait_for(commit.submit(5), 5) == 50
