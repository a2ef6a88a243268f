"""worker.publisher.Publisher against a real Redis: immediate first write, coalescing, timer flush, finish, refusal."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import events
from shared.config import Settings
from shared.errors import ErrorCode
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.state import Generations, PublishResult
from shared.streams import fold, read_range
from worker.publisher import Publisher, PublishRefused

REQUEST = StoredRequest(messages=[{"role": "user", "content": "hi"}], model="demo-model")
# Long enough that a burst of synchronous add() calls always lands inside one window.
LONG_WINDOW_S = 0.5


class CountingGenerations(Generations):
    """Records every publish call (number of payloads per call) and every reply's outcome."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.calls: list[int] = []
        self.outcomes: list[str] = []

    async def publish(
        self, generation_id: str, attempt: int, payloads: list[str], *args: Any, **kwargs: Any
    ) -> PublishResult:
        self.calls.append(len(payloads))
        result = await super().publish(generation_id, attempt, payloads, *args, **kwargs)
        self.outcomes.append(result.outcome)
        return result


@pytest.fixture
def generations(redis: Redis) -> CountingGenerations:
    return CountingGenerations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60))


async def _running(generations: Generations) -> tuple[str, int]:
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {}, "anonymous")
    claim = await generations.claim(generation_id)
    assert claim.outcome == "ok"
    return generation_id, claim.attempt


async def _events(redis: Redis, generations: Generations, generation_id: str) -> list[dict[str, Any]]:
    entries = await read_range(redis, generations.keys(generation_id).events)
    return [json.loads(raw) for _, raw in entries]


async def _xlen(redis: Redis, generations: Generations, generation_id: str) -> int:
    return int(await redis.xlen(generations.keys(generation_id).events))


async def test_window_zero_writes_every_piece_as_its_own_event_in_order(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, 0.0)
    pieces: list[tuple[str, str]] = [
        ("content", "Hel"),
        ("content", "lo"),
        ("reasoning", "hmm"),
        ("content", " wörld 🌍"),
    ]
    for index, (kind, text) in enumerate(pieces, start=1):
        await publisher.add(kind, text)  # type: ignore[arg-type]
        assert await _xlen(redis, generations, generation_id) == index
    written = await _events(redis, generations, generation_id)
    assert [(event["type"], event["data"]) for event in written] == pieces
    assert generations.calls == [1, 1, 1, 1]
    publisher.close()


async def test_first_piece_is_written_before_the_window_passes(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    await publisher.add("content", "first")
    assert await _xlen(redis, generations, generation_id) == 1
    await publisher.add("content", "second")
    # The second piece waits for the window.
    assert await _xlen(redis, generations, generation_id) == 1
    publisher.close()


async def test_fast_pieces_of_one_kind_coalesce_into_fewer_events(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    pieces = [f"tok{i} " for i in range(200)]
    for piece in pieces:
        await publisher.add("content", piece)
    await publisher.flush()
    written = await _events(redis, generations, generation_id)
    assert all(event["type"] == "content" for event in written)
    assert len(written) < len(pieces)
    assert len(written) == 2  # the immediate first piece, then one coalesced event
    assert "".join(event["data"] for event in written) == "".join(pieces)
    publisher.close()


async def test_interleaved_content_and_reasoning_keep_order_and_kinds(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    await publisher.add("content", "a")
    await publisher.add("reasoning", "b1")
    await publisher.add("reasoning", "b2")
    await publisher.add("content", "c1")
    await publisher.add("content", "c2")
    await publisher.add("reasoning", "d")
    await publisher.add("content", "e")
    await publisher.flush()
    written = await _events(redis, generations, generation_id)
    assert [(event["type"], event["data"]) for event in written] == [
        ("content", "a"),
        ("reasoning", "b1b2"),
        ("content", "c1c2"),
        ("reasoning", "d"),
        ("content", "e"),
    ]
    # One write for the first piece, one for the coalesced rest.
    assert generations.calls == [1, 4]
    publisher.close()


async def test_pending_piece_is_flushed_by_the_timer_without_further_adds(
    redis: Redis, generations: CountingGenerations
) -> None:
    window = 0.1
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, window)
    await publisher.add("content", "first")
    await publisher.add("content", "second")
    await publisher.add("content", "third")
    for _ in range(100):  # wait well past the window, without asserting how long it took
        await asyncio.sleep(window)
        if await _xlen(redis, generations, generation_id) > 1:
            break
    written = await _events(redis, generations, generation_id)
    assert [event["data"] for event in written] == ["first", "secondthird"]
    publisher.close()


async def test_finish_writes_pending_pieces_and_terminal_in_one_publish(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    added = ["Hello", ", ", "wörld", " 🌍", "!"]
    await publisher.add("content", added[0])
    await publisher.add("reasoning", "thinking")
    for piece in added[1:]:
        await publisher.add("content", piece)
    assert await _xlen(redis, generations, generation_id) == 1
    calls_before = len(generations.calls)
    text = "".join(added)
    result = await publisher.finish(events.done(text, "stop", None), "done", {"finish_reason": "stop"})
    assert result.outcome == "written"
    assert generations.calls[calls_before:] == [3]  # reasoning, coalesced content, done: one write
    entries = await read_range(redis, generations.keys(generation_id).events)
    folded = fold(entries)
    assert folded.text == text
    assert folded.reasoning == "thinking"
    assert folded.terminal is not None
    assert folded.terminal["type"] == "done"
    assert json.loads(entries[-1][1])["type"] == "done"
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "done"
    assert state.terminal_id == entries[-1][0]
    publisher.close()


async def test_publish_sends_pending_pieces_before_the_payload(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    await publisher.add("content", "a")
    await publisher.add("content", "b")
    await publisher.publish(events.reset(attempt, "retry"))
    written = await _events(redis, generations, generation_id)
    assert [event["type"] for event in written] == ["content", "content", "reset"]
    assert [event.get("data") for event in written[:2]] == ["a", "b"]
    publisher.close()


async def test_add_after_cancel_while_queued_raises_publish_refused(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {}, "anonymous")
    assert (await generations.cancel(generation_id))[0] == "cancelled"
    publisher = Publisher(generations, generation_id, 1, 0.0)
    with pytest.raises(PublishRefused) as refused:
        await publisher.add("content", "never")
    assert refused.value.result.outcome == "finished"
    assert await _xlen(redis, generations, generation_id) == 1
    publisher.close()


async def test_flush_after_terminal_written_elsewhere_raises_publish_refused(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    await publisher.add("content", "first")
    await publisher.add("content", "pending")
    ended = await generations.publish(generation_id, attempt, [events.error(ErrorCode.INTERNAL)], "error")
    assert ended.outcome == "written"
    with pytest.raises(PublishRefused) as refused:
        await publisher.flush()
    assert refused.value.result.outcome == "finished"
    written = await _events(redis, generations, generation_id)
    assert [event["type"] for event in written] == ["content", "error"]
    publisher.close()


async def test_background_refusal_surfaces_on_the_next_add(redis: Redis, generations: CountingGenerations) -> None:
    window = 0.1
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, window)
    await publisher.add("content", "first")
    await publisher.add("content", "pending")
    await generations.publish(generation_id, attempt, [events.error(ErrorCode.INTERNAL)], "error")
    for _ in range(100):  # let the timer's background write run and be refused
        await asyncio.sleep(window)
        if len(generations.outcomes) >= 3:
            break
    assert generations.outcomes == ["written", "written", "finished"]
    with pytest.raises(PublishRefused):
        await publisher.add("content", "more")
    assert await _xlen(redis, generations, generation_id) == 2
    publisher.close()


async def test_stale_attempt_add_raises_publish_refused(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    await generations.claim(generation_id)  # a retry took over
    publisher = Publisher(generations, generation_id, attempt, 0.0)
    with pytest.raises(PublishRefused) as refused:
        await publisher.add("content", "late")
    assert refused.value.result.outcome == "stale"
    assert await _xlen(redis, generations, generation_id) == 0
    publisher.close()


async def test_cancel_request_rides_back_on_a_write(generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, 0.0)
    await publisher.add("content", "a")
    assert publisher.cancel_requested is False
    await generations.cancel(generation_id)
    await publisher.add("content", "b")
    assert publisher.cancel_requested is True
    publisher.close()


class FlakyGenerations(CountingGenerations):
    """Redis going away mid-call: `lose_reply` calls are applied but their reply never arrives (ConnectionError),
    `refuse` calls fail before reaching Redis, `hang` calls are applied and then wait forever."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.lose_reply: set[int] = set()
        self.refuse: set[int] = set()
        self.hang: set[int] = set()
        self.n = 0

    async def publish(
        self, generation_id: str, attempt: int, payloads: list[str], *args: Any, **kwargs: Any
    ) -> PublishResult:
        self.n += 1
        if self.n in self.refuse:
            raise RedisConnectionError("Connection refused")
        result = await super().publish(generation_id, attempt, payloads, *args, **kwargs)
        if self.n in self.lose_reply:
            raise RedisConnectionError("Connection closed by server.")
        if self.n in self.hang:
            await asyncio.Event().wait()
        return result


@pytest.fixture
def flaky(redis: Redis) -> FlakyGenerations:
    return FlakyGenerations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60))


async def _finish_done(publisher: Publisher, text: str) -> PublishResult:
    await publisher.settle()
    return await publisher.finish(events.done(text, "stop", None), "done", {})


async def test_write_whose_reply_was_lost_is_repeated_without_a_duplicate(
    redis: Redis, flaky: FlakyGenerations
) -> None:
    generation_id, attempt = await _running(flaky)
    publisher = Publisher(flaky, generation_id, attempt, 0.0)
    flaky.lose_reply = {2, 5}  # the second piece's write, and the terminal's first try
    for piece in ["a", "b", "c"]:
        await publisher.add("content", piece)
    assert (await _finish_done(publisher, "abc")).outcome == "written"
    entries = await read_range(redis, flaky.keys(generation_id).events)
    folded = fold(entries)
    assert [json.loads(raw).get("data") for _, raw in entries[:-1]] == ["a", "b", "c"]
    assert folded.text == "abc"
    assert [json.loads(raw)["type"] for _, raw in entries].count("done") == 1
    assert flaky.n == 6  # 3 pieces + one repeat + terminal + its repeat


async def test_pieces_wait_in_memory_while_redis_refuses_and_go_out_in_order(
    redis: Redis, flaky: FlakyGenerations
) -> None:
    generation_id, attempt = await _running(flaky)
    publisher = Publisher(flaky, generation_id, attempt, 0.0)
    flaky.refuse = {2, 3, 4}
    pieces = ["one ", "two ", "three ", "four"]
    for piece in pieces:
        await publisher.add("content", piece)
    assert (await _finish_done(publisher, "".join(pieces))).outcome == "written"
    folded = fold(await read_range(redis, flaky.keys(generation_id).events))
    assert folded.text == "".join(pieces)
    assert folded.terminal is not None


async def test_write_cancelled_after_redis_applied_it_is_repeated_unchanged(
    redis: Redis, flaky: FlakyGenerations
) -> None:
    generation_id, attempt = await _running(flaky)
    publisher = Publisher(flaky, generation_id, attempt, 0.0)
    await publisher.add("content", "a")
    flaky.hang = {2}
    stuck = asyncio.ensure_future(publisher.add("content", "b"))
    while flaky.n < 2:
        await asyncio.sleep(0.01)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    assert (await _finish_done(publisher, "ab")).outcome == "written"
    entries = await read_range(redis, flaky.keys(generation_id).events)
    assert [json.loads(raw)["type"] for _, raw in entries] == ["content", "content", "done"]
    assert fold(entries).text == "ab"


async def test_writes_never_overlap_even_when_one_outlasts_the_window(redis: Redis, flaky: FlakyGenerations) -> None:
    generation_id, attempt = await _running(flaky)
    publisher = Publisher(flaky, generation_id, attempt, 0.001)
    flaky.refuse = {2, 3, 4, 5}  # the second write takes ~0.75 s of back-off: far longer than the window
    pieces = [f"{i} " for i in range(50)]
    for piece in pieces:
        await publisher.add("content", piece)
        await asyncio.sleep(0.002)
    assert (await _finish_done(publisher, "".join(pieces))).outcome == "written"
    folded = fold(await read_range(redis, flaky.keys(generation_id).events))
    assert folded.text == "".join(pieces)
