"""worker.publisher.Publisher against a real Redis: write-behind batching, minimum interval, finish, refusal, retry."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
# A minimum interval long enough that nothing but the test's own action ends it.
LONG_WINDOW_S = 5.0


class CountingGenerations(Generations):
    """Records every publish call (number of payloads per call) and every reply's outcome; publishes as the
    worker does (`direct_publish`)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings, direct_publish=True)
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
async def generations(redis: Redis) -> AsyncIterator[CountingGenerations]:
    generations = CountingGenerations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60))
    yield generations
    await generations.aclose()


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


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for a positive signal (bounded, so a regression fails instead of hanging)."""
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def _written(redis: Redis, generations: Generations, generation_id: str, count: int) -> None:
    async def reached() -> bool:
        return await _xlen(redis, generations, generation_id) >= count

    await _until(reached)


class GatedGenerations(CountingGenerations):
    """Each publish waits for `gate` (once set, writes pass freely): a slow Redis, under the test's control."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.gate = asyncio.Event()
        self.started = 0

    async def publish(
        self, generation_id: str, attempt: int, payloads: list[str], *args: Any, **kwargs: Any
    ) -> PublishResult:
        self.started += 1
        await self.gate.wait()
        return await super().publish(generation_id, attempt, payloads, *args, **kwargs)


@pytest.fixture
async def gated(redis: Redis) -> AsyncIterator[GatedGenerations]:
    generations = GatedGenerations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60))
    yield generations
    await generations.aclose()


async def test_a_piece_with_no_write_in_flight_goes_out_alone_at_once(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt)
    pieces: list[tuple[str, str]] = [
        ("content", "Hel"),
        ("content", "lo"),
        ("reasoning", "hmm"),
        ("content", " wörld 🌍"),
    ]
    for index, (kind, text) in enumerate(pieces, start=1):
        publisher.add(kind, text)  # type: ignore[arg-type]
        await _written(redis, generations, generation_id, index)
    written = await _events(redis, generations, generation_id)
    assert [(event["type"], event["data"]) for event in written] == pieces
    assert generations.calls == [1, 1, 1, 1]


async def test_pieces_that_arrive_during_a_write_go_together_in_the_next_one(
    redis: Redis, gated: GatedGenerations
) -> None:
    generation_id, attempt = await _running(gated)
    gated.gate.set()
    publisher = Publisher(gated, generation_id, attempt)
    publisher.add("content", "a")
    await _written(redis, gated, generation_id, 1)
    gated.gate.clear()
    publisher.add("content", "b")

    async def second_write_started() -> bool:
        return gated.started == 2

    await _until(second_write_started)
    for piece in ["c1", "c2", "c3"]:
        publisher.add("content", piece)
    publisher.add("reasoning", "r")
    publisher.add("content", "d")
    assert await _xlen(redis, gated, generation_id) == 1  # the write of "b" is still in flight
    gated.gate.set()
    await _written(redis, gated, generation_id, 5)
    written = await _events(redis, gated, generation_id)
    assert [(e["type"], e["data"]) for e in written] == [
        ("content", "a"),
        ("content", "b"),
        ("content", "c1c2c3"),
        ("reasoning", "r"),
        ("content", "d"),
    ]
    assert gated.calls == [1, 1, 3]  # one write per round trip, however many pieces came meanwhile


async def test_a_burst_between_two_yields_is_one_event(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt)
    pieces = [f"tok{i} " for i in range(200)]
    for piece in pieces:
        publisher.add("content", piece)
    await _written(redis, generations, generation_id, 1)
    await publisher.settle()
    written = await _events(redis, generations, generation_id)
    assert [event["data"] for event in written] == ["".join(pieces)]
    assert generations.calls == [1]


async def test_interleaved_content_and_reasoning_keep_order_and_kinds(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt)
    for kind, text in [("content", "a"), ("reasoning", "b1"), ("reasoning", "b2"), ("content", "c1")]:
        publisher.add(kind, text)  # type: ignore[arg-type]
    for kind, text in [("content", "c2"), ("reasoning", "d"), ("content", "e")]:
        publisher.add(kind, text)  # type: ignore[arg-type]
    await publisher.flush()
    written = await _events(redis, generations, generation_id)
    assert [(event["type"], event["data"]) for event in written] == [
        ("content", "a"),
        ("reasoning", "b1b2"),
        ("content", "c1c2"),
        ("reasoning", "d"),
        ("content", "e"),
    ]
    assert generations.calls == [5]


async def test_min_interval_holds_later_pieces_back(redis: Redis, generations: CountingGenerations) -> None:
    window = 0.1
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, window)
    publisher.add("content", "first")
    await _written(redis, generations, generation_id, 1)
    publisher.add("content", "second")
    publisher.add("content", "third")
    await _written(redis, generations, generation_id, 2)  # no further add, no flush: the interval's end writes
    written = await _events(redis, generations, generation_id)
    assert [event["data"] for event in written] == ["first", "secondthird"]


async def test_finish_writes_pending_pieces_and_terminal_in_one_publish(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    added = ["Hello", ", ", "wörld", " 🌍", "!"]
    publisher.add("content", added[0])
    await _written(redis, generations, generation_id, 1)
    publisher.add("reasoning", "thinking")
    for piece in added[1:]:
        publisher.add("content", piece)
    calls_before = len(generations.calls)
    text = "".join(added)
    result = await publisher.finish(events.done(text, "stop", None), "done", {"finish_reason": "stop"})
    assert result.outcome == "written"
    # The interval's pause is cut short and the ending takes the pending pieces: reasoning, content, done.
    assert generations.calls[calls_before:] == [3]
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


async def test_an_ending_during_a_write_takes_what_is_pending_with_its_terminal(
    redis: Redis, gated: GatedGenerations
) -> None:
    generation_id, attempt = await _running(gated)
    publisher = Publisher(gated, generation_id, attempt)
    publisher.add("content", "a")

    async def first_write_started() -> bool:
        return gated.started == 1

    await _until(first_write_started)
    publisher.add("content", "b")
    ending = asyncio.ensure_future(publisher.finish(events.done("ab", "stop", None), "done", {}))
    await asyncio.sleep(0)
    gated.gate.set()
    assert (await ending).outcome == "written"
    assert gated.calls == [1, 2]  # "a"; then "b" and done together
    assert fold(await read_range(redis, gated.keys(generation_id).events)).text == "ab"


async def test_publish_sends_pending_pieces_before_the_payload(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt)
    publisher.add("content", "a")
    publisher.add("content", "b")
    await publisher.publish(events.reset(attempt, "retry"))
    written = await _events(redis, generations, generation_id)
    assert [(event["type"], event.get("data")) for event in written[:1]] == [("content", "ab")]
    assert [event["type"] for event in written] == ["content", "reset"]
    assert generations.calls == [2]


async def test_add_after_cancel_while_queued_raises_publish_refused(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {}, "anonymous")
    assert (await generations.cancel(generation_id))[0] == "cancelled"
    publisher = Publisher(generations, generation_id, 1)
    publisher.add("content", "never")

    async def refused_in_background() -> bool:
        return generations.outcomes == ["finished"]

    await _until(refused_in_background)
    with pytest.raises(PublishRefused) as refused:
        publisher.add("content", "again")
    assert refused.value.result.outcome == "finished"
    assert await _xlen(redis, generations, generation_id) == 1


async def test_flush_after_terminal_written_elsewhere_raises_publish_refused(
    redis: Redis, generations: CountingGenerations
) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt, LONG_WINDOW_S)
    publisher.add("content", "first")
    await _written(redis, generations, generation_id, 1)
    publisher.add("content", "pending")
    ended = await generations.publish(generation_id, attempt, [events.error(ErrorCode.INTERNAL)], "error")
    assert ended.outcome == "written"
    with pytest.raises(PublishRefused) as refused:
        await publisher.flush()
    assert refused.value.result.outcome == "finished"
    written = await _events(redis, generations, generation_id)
    assert [event["type"] for event in written] == ["content", "error"]


async def test_stale_attempt_add_raises_publish_refused(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    await generations.claim(generation_id)  # a retry took over
    publisher = Publisher(generations, generation_id, attempt)
    publisher.add("content", "late")
    with pytest.raises(PublishRefused) as refused:
        await publisher.flush()
    assert refused.value.result.outcome == "stale"
    assert await _xlen(redis, generations, generation_id) == 0


async def test_cancel_request_rides_back_on_a_write(redis: Redis, generations: CountingGenerations) -> None:
    generation_id, attempt = await _running(generations)
    publisher = Publisher(generations, generation_id, attempt)
    publisher.add("content", "a")
    await _written(redis, generations, generation_id, 1)
    assert publisher.cancel_requested is False
    await generations.cancel(generation_id)
    publisher.add("content", "b")

    async def replied() -> bool:
        return len(generations.outcomes) == 2

    await _until(replied)
    assert publisher.cancel_requested is True


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
async def flaky(redis: Redis) -> AsyncIterator[FlakyGenerations]:
    generations = FlakyGenerations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60))
    yield generations
    await generations.aclose()


async def _finish_done(publisher: Publisher, text: str) -> PublishResult:
    await publisher.settle()
    return await publisher.finish(events.done(text, "stop", None), "done", {})


async def test_write_whose_reply_was_lost_is_repeated_without_a_duplicate(
    redis: Redis, flaky: FlakyGenerations
) -> None:
    generation_id, attempt = await _running(flaky)
    publisher = Publisher(flaky, generation_id, attempt)
    flaky.lose_reply = {2, 5}  # the second piece's write, and the terminal's first try
    for count, piece in enumerate(["a", "b", "c"], start=1):
        publisher.add("content", piece)
        await _written(redis, flaky, generation_id, count)
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
    publisher = Publisher(flaky, generation_id, attempt)
    flaky.refuse = {2, 3, 4}
    pieces = ["one ", "two ", "three ", "four"]
    for piece in pieces:
        publisher.add("content", piece)
        await asyncio.sleep(0.02)
    assert (await _finish_done(publisher, "".join(pieces))).outcome == "written"
    folded = fold(await read_range(redis, flaky.keys(generation_id).events))
    assert folded.text == "".join(pieces)
    assert folded.terminal is not None


async def test_write_cancelled_after_redis_applied_it_is_repeated_unchanged(
    redis: Redis, flaky: FlakyGenerations
) -> None:
    generation_id, attempt = await _running(flaky)
    publisher = Publisher(flaky, generation_id, attempt)
    publisher.add("content", "a")
    await _written(redis, flaky, generation_id, 1)
    flaky.hang = {2}
    publisher.add("content", "b")
    await _written(redis, flaky, generation_id, 2)  # applied; its reply never comes
    publisher.abandon()
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
        publisher.add("content", piece)
        await asyncio.sleep(0.002)
    assert (await _finish_done(publisher, "".join(pieces))).outcome == "written"
    folded = fold(await read_range(redis, flaky.keys(generation_id).events))
    assert folded.text == "".join(pieces)
