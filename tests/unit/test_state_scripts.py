"""shared.state.Generations and its Lua scripts against a real Redis: create, claim, publish, cancel."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared import events
from shared.config import Settings
from shared.errors import ErrorCode
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.state import Generations
from shared.streams import fold, is_terminal, read_range

FINISHED_TTL_S = 30
LIVE_TTL_S = 600

REQUEST = StoredRequest(
    messages=[{"role": "user", "content": "Say hi 🌍"}],
    model="demo-model",
    provider_args={"temperature": 0.5},
    error_context="unit-test",
)


@pytest.fixture(params=[False, True], ids=["redis-py", "direct"])
async def generations(redis: Redis, request: pytest.FixtureRequest) -> AsyncIterator[Generations]:
    """Both publish paths: redis-py's (a worker on a Redis Cluster) and `DirectScript` (on plain Redis)."""
    settings = Settings(
        key_prefix="u" + uuid.uuid4().hex[:8],
        finished_ttl_s=FINISHED_TTL_S,
        live_ttl_s=LIVE_TTL_S,
    )
    generations = Generations(redis, settings, direct_publish=request.param)
    yield generations
    await generations.aclose()


async def _new(generations: Generations, owner: str = "anonymous") -> str:
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {"label": "héllo", "n": 1}, owner)
    return generation_id


async def _running(generations: Generations) -> tuple[str, int]:
    generation_id = await _new(generations)
    claim = await generations.claim(generation_id)
    assert claim.outcome == "ok"
    return generation_id, claim.attempt


async def _xlen(redis: Redis, generations: Generations, generation_id: str) -> int:
    return int(await redis.xlen(generations.keys(generation_id).events))


async def test_create_then_get_returns_queued_state_with_request_metadata_owner(generations: Generations) -> None:
    generation_id = await _new(generations, owner="key:abc")
    state = await generations.get(generation_id)
    assert state is not None
    assert state.id == generation_id
    assert state.status == "queued"
    assert state.request == REQUEST
    assert state.model == "demo-model"
    assert state.metadata == {"label": "héllo", "n": 1}
    assert state.owner == "key:abc"
    assert state.attempt == 0
    assert state.created_at > 0
    assert state.started_at is None
    assert state.finished_at is None
    assert state.first_id is None
    assert state.terminal_id is None
    assert state.cancel_requested is False


async def test_create_sets_live_ttl_on_state(redis: Redis, generations: Generations) -> None:
    generation_id = await _new(generations)
    ttl = await redis.ttl(generations.keys(generation_id).state)
    assert 0 < ttl <= LIVE_TTL_S


async def test_get_unknown_generation_is_none(generations: Generations) -> None:
    assert await generations.get(new_generation_id()) is None


async def test_first_claim_is_attempt_one_and_marks_running(generations: Generations) -> None:
    generation_id = await _new(generations)
    claim = await generations.claim(generation_id)
    assert (claim.outcome, claim.attempt, claim.had_output) == ("ok", 1, False)
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "running"
    assert state.attempt == 1
    assert state.started_at is not None


async def test_second_claim_without_output_is_attempt_two_without_output(generations: Generations) -> None:
    generation_id = await _new(generations)
    await generations.claim(generation_id)
    claim = await generations.claim(generation_id)
    assert (claim.outcome, claim.attempt, claim.had_output) == ("ok", 2, False)


async def test_second_claim_after_output_reports_had_output(generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    first_started = (await generations.get(generation_id)).started_at  # type: ignore[union-attr]
    assert (await generations.publish(generation_id, attempt, [events.content("partial")])).outcome == "written"
    claim = await generations.claim(generation_id)
    assert (claim.outcome, claim.attempt, claim.had_output) == ("ok", 2, True)
    state = await generations.get(generation_id)
    assert state is not None
    assert state.started_at == first_started


async def test_publish_writes_events_in_order(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    first = await generations.publish(generation_id, attempt, [events.content("a"), events.reasoning("b")])
    second = await generations.publish(generation_id, attempt, [events.content("c")])
    assert first.outcome == "written"
    assert second.outcome == "written"
    assert first.cancel_requested is False
    entries = await read_range(redis, generations.keys(generation_id).events)
    assert [raw for _, raw in entries] == [events.content("a"), events.reasoning("b"), events.content("c")]
    assert first.last_id == entries[1][0]
    assert second.last_id == entries[2][0]
    state = await generations.get(generation_id)
    assert state is not None
    assert state.terminal_id is None
    assert state.status == "running"
    stream_ttl = await redis.ttl(generations.keys(generation_id).events)
    assert 0 < stream_ttl <= LIVE_TTL_S


async def test_first_id_is_the_first_entry_when_first_publish_has_one_event(
    redis: Redis, generations: Generations
) -> None:
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.content("a")])
    await generations.publish(generation_id, attempt, [events.content("b"), events.content("c")])
    entries = await read_range(redis, generations.keys(generation_id).events)
    state = await generations.get(generation_id)
    assert state is not None
    assert state.first_id == entries[0][0]


async def test_first_id_is_the_first_entry_when_first_publish_has_several_events(
    redis: Redis, generations: Generations
) -> None:
    # state.first_id is compared with the oldest retained entry to detect MAXLEN trimming (api.sse.replay_plan).
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.content("a"), events.reasoning("b"), events.content("c")])
    entries = await read_range(redis, generations.keys(generation_id).events)
    assert len(entries) == 3
    state = await generations.get(generation_id)
    assert state is not None
    assert state.first_id == entries[0][0]


async def test_publish_with_stale_attempt_is_refused_and_writes_nothing(redis: Redis, generations: Generations) -> None:
    generation_id, _ = await _running(generations)
    retry = await generations.claim(generation_id)
    assert retry.attempt == 2
    await generations.publish(generation_id, 2, [events.content("current")])
    stale = await generations.publish(generation_id, 1, [events.content("stale")])
    assert stale.outcome == "stale"
    assert await _xlen(redis, generations, generation_id) == 1
    stale_terminal = await generations.publish(generation_id, 1, [events.error(ErrorCode.INTERNAL)], "error")
    assert stale_terminal.outcome == "stale"
    assert await _xlen(redis, generations, generation_id) == 1
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "running"
    assert state.terminal_id is None


async def test_terminal_publish_sets_status_fields_and_ttls(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.content("Hello")])
    usage = {"total_tokens": 7}
    result = await generations.publish(
        generation_id,
        attempt,
        [events.content(" world"), events.done("Hello world", "stop", usage)],
        "done",
        {"finish_reason": "stop", "usage": json.dumps(usage), "length": "11"},
    )
    assert result.outcome == "written"
    keys = generations.keys(generation_id)
    entries = await read_range(redis, keys.events)
    assert result.last_id == entries[-1][0]
    assert is_terminal(entries[-1][1])
    assert fold(entries).text == "Hello world"
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "done"
    assert state.terminal_id == entries[-1][0]
    assert state.first_id == entries[0][0]
    assert state.finish_reason == "stop"
    assert state.usage == usage
    assert state.finished_at is not None
    assert state.finished_at >= state.created_at
    for key in (keys.events, keys.state):
        ttl = await redis.ttl(key)
        assert 0 < ttl <= FINISHED_TTL_S


async def test_publish_after_terminal_is_refused_and_stream_unchanged(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    done = await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")
    assert done.outcome == "written"
    before = await _xlen(redis, generations, generation_id)
    again = await generations.publish(generation_id, attempt, [events.content("late")])
    assert again.outcome == "finished"
    assert again.last_id == done.last_id
    second_terminal = await generations.publish(
        generation_id, attempt, [events.error(ErrorCode.INTERNAL)], "error", {"error_code": "internal"}
    )
    assert second_terminal.outcome == "finished"
    assert await _xlen(redis, generations, generation_id) == before == 1
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "done"
    assert state.error_code is None


async def test_claim_after_terminal_is_refused(generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.error(ErrorCode.INTERNAL)], "error")
    claim = await generations.claim(generation_id)
    assert claim.outcome == "terminal"
    assert claim.attempt == attempt


async def test_cancel_queued_writes_exactly_one_cancelled_error(redis: Redis, generations: Generations) -> None:
    generation_id = await _new(generations)
    assert await generations.cancel(generation_id) == ("cancelled", "cancelled")
    keys = generations.keys(generation_id)
    entries = await read_range(redis, keys.events)
    assert len(entries) == 1
    event = json.loads(entries[0][1])
    assert event["type"] == "error"
    assert event["code"] == "cancelled"
    assert event["data"]["retryable"] is False
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "cancelled"
    assert state.error_code == "cancelled"
    assert state.terminal_id == entries[0][0]
    assert state.first_id == entries[0][0]
    assert state.finished_at is not None
    for key in (keys.events, keys.state):
        ttl = await redis.ttl(key)
        assert 0 < ttl <= FINISHED_TTL_S


async def test_claim_after_cancel_while_queued_is_terminal(redis: Redis, generations: Generations) -> None:
    generation_id = await _new(generations)
    await generations.cancel(generation_id)
    claim = await generations.claim(generation_id)
    assert claim.outcome == "terminal"
    refused = await generations.publish(generation_id, 1, [events.content("never")])
    assert refused.outcome == "finished"
    assert await _xlen(redis, generations, generation_id) == 1


async def test_cancel_running_sets_flag_that_rides_back_on_publish(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    assert await generations.cancel_requested(generation_id) is False
    assert await generations.cancel(generation_id) == ("cancelling", "running")
    assert await generations.cancel_requested(generation_id) is True
    assert await _xlen(redis, generations, generation_id) == 0
    reply = await generations.publish(generation_id, attempt, [events.content("x")])
    assert reply.outcome == "written"
    assert reply.cancel_requested is True
    terminal = await generations.publish(
        generation_id, attempt, [events.error(ErrorCode.CANCELLED)], "cancelled", {"error_code": "cancelled"}
    )
    assert terminal.outcome == "written"
    assert terminal.cancel_requested is True
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "cancelled"
    assert state.cancel_requested is True


async def test_cancel_finished_returns_finished_and_writes_nothing(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")
    assert await generations.cancel(generation_id) == ("finished", "done")
    assert await _xlen(redis, generations, generation_id) == 1
    state = await generations.get(generation_id)
    assert state is not None
    assert state.status == "done"
    assert state.cancel_requested is False


async def test_unknown_generation_is_missing_everywhere(redis: Redis, generations: Generations) -> None:
    generation_id = new_generation_id()
    assert await generations.cancel(generation_id) == ("missing", "")
    claim = await generations.claim(generation_id)
    assert claim.outcome == "missing"
    assert claim.had_output is False
    published = await generations.publish(generation_id, 1, [events.content("x")])
    assert published.outcome == "missing"
    keys = generations.keys(generation_id)
    assert await redis.exists(keys.events, keys.state) == 0
    assert await generations.cancel_requested(generation_id) is False


async def test_concurrent_cancel_and_terminal_publish_end_with_one_terminal(
    redis: Redis, generations: Generations
) -> None:
    running = [await _running(generations) for _ in range(50)]

    async def race(generation_id: str, attempt: int) -> None:
        await asyncio.gather(
            generations.cancel(generation_id),
            generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done"),
        )

    await asyncio.gather(*(race(generation_id, attempt) for generation_id, attempt in running))
    for generation_id, _ in running:
        entries = await read_range(redis, generations.keys(generation_id).events)
        terminals = [raw for _, raw in entries if is_terminal(raw)]
        assert len(terminals) == 1
        assert is_terminal(entries[-1][1])
        state = await generations.get(generation_id)
        assert state is not None
        assert state.terminal_id == entries[-1][0]


async def test_concurrent_cancel_and_claim_on_queued_end_with_one_terminal(
    redis: Redis, generations: Generations
) -> None:
    queued = [await _new(generations) for _ in range(50)]

    async def race(generation_id: str) -> None:
        _, claim = await asyncio.gather(generations.cancel(generation_id), generations.claim(generation_id))
        if claim.outcome == "ok":
            # The worker won the claim: cancel only flagged it, so the worker ends it.
            await generations.publish(generation_id, claim.attempt, [events.error(ErrorCode.CANCELLED)], "cancelled")

    await asyncio.gather(*(race(generation_id) for generation_id in queued))
    for generation_id in queued:
        entries = await read_range(redis, generations.keys(generation_id).events)
        assert [json.loads(raw)["code"] for _, raw in entries] == ["cancelled"]
        state = await generations.get(generation_id)
        assert state is not None
        assert state.status == "cancelled"


async def test_repeated_write_with_its_sequence_number_appends_nothing(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    first = await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")], seq=1)
    # Redis applied the write but the reply was lost: the worker sends the very same write again.
    again = await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")], seq=1)
    assert again.outcome == "written"
    assert again.last_id == first.last_id
    second = await generations.publish(generation_id, attempt, [events.content("c")], seq=2)
    assert second.outcome == "written"
    entries = await read_range(redis, generations.keys(generation_id).events)
    assert [raw for _, raw in entries] == [events.content("a"), events.content("b"), events.content("c")]


async def test_repeated_terminal_write_is_acknowledged_not_refused(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.content("a")], seq=1)
    done = [events.done("a", "stop", None)]
    ended = await generations.publish(generation_id, attempt, done, "done", seq=2)
    again = await generations.publish(generation_id, attempt, done, "done", seq=2)
    assert (ended.outcome, again.outcome) == ("written", "written")
    assert again.last_id == ended.last_id
    entries = await read_range(redis, generations.keys(generation_id).events)
    assert [is_terminal(raw) for _, raw in entries] == [False, True]
    # A later write of that attempt is still refused: the generation has ended.
    late = await generations.publish(generation_id, attempt, [events.content("x")], seq=3)
    assert late.outcome == "finished"


async def test_sequence_numbers_start_afresh_with_each_attempt(redis: Redis, generations: Generations) -> None:
    generation_id, attempt = await _running(generations)
    for seq in (1, 2, 3):
        await generations.publish(generation_id, attempt, [events.content(str(seq))], seq=seq)
    retry = await generations.claim(generation_id)
    fresh = await generations.publish(generation_id, retry.attempt, [events.reset(retry.attempt, "retry")], seq=1)
    assert fresh.outcome == "written"
    # The old attempt repeating its last write is neither appended nor acknowledged: it is stale.
    stale = await generations.publish(generation_id, attempt, [events.content("3")], seq=3)
    assert stale.outcome == "stale"
    entries = await read_range(redis, generations.keys(generation_id).events)
    assert [json.loads(raw)["type"] for _, raw in entries] == ["content", "content", "content", "reset"]


async def _rings(redis: Redis, generations: Generations, generation_id: str) -> int:
    """Doorbell entries naming this generation's stream (its bucket's other generations ring it too)."""
    keys = generations.keys(generation_id)
    entries = await redis.xrange(keys.bell)
    return sum(1 for _, fields in entries if fields["k"] == keys.events)


async def test_every_write_that_appends_rings_the_doorbell_once_and_no_other(
    redis: Redis, generations: Generations
) -> None:
    generation_id, attempt = await _running(generations)
    written = await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")], seq=1)
    assert await _rings(redis, generations, generation_id) == 1  # one ring for the write, not one per event
    assert (await redis.xrange(generations.keys(generation_id).bell))[-1][1]["i"] == written.last_id
    await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")], seq=1)
    await generations.publish(generation_id, attempt - 1, [events.content("stale")])
    assert await _rings(redis, generations, generation_id) == 1  # a repeat or a refused write appends nothing
    await generations.publish(generation_id, attempt, [events.done("ab", "stop", None)], "done", seq=2)
    assert await _rings(redis, generations, generation_id) == 2
    assert 0 < await redis.ttl(generations.keys(generation_id).bell) <= 86400

    queued = await _new(generations)
    assert (await generations.cancel(queued))[0] == "cancelled"
    assert await _rings(redis, generations, queued) == 1
    lost, lost_attempt = await _running(generations)
    assert (await generations.reap(lost, lost_attempt, 0))[0] == "ended"
    assert await _rings(redis, generations, lost) == 1
