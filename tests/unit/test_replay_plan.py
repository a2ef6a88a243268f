"""api.sse resume point, replay plan over a trimmed stream (real Redis), id ordering and SSE frame encoding."""

from __future__ import annotations

import json
import uuid

import pytest
from redis.asyncio import Redis

from api.errors import ApiError
from api.sse import encode_entries, frames, is_at_or_after, replay_plan, resume_point
from shared import events
from shared.config import Settings
from shared.errors import ErrorCode
from shared.ids import new_generation_id, parse_stream_id
from shared.jobs import StoredRequest
from shared.state import Generations, GenerationState

REQUEST = StoredRequest(messages=[{"role": "user", "content": "hi"}], model="demo-model")


@pytest.fixture
def generations(redis: Redis) -> Generations:
    return Generations(redis, Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60))


async def _stream(generations: Generations, pieces: list[str], *, one_publish: bool = False) -> tuple[str, list[str]]:
    """A running generation with `pieces` published (one event per publish unless `one_publish`) -> (id, entry ids)."""
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {}, "anonymous")
    claim = await generations.claim(generation_id)
    if one_publish:
        await generations.publish(generation_id, claim.attempt, [events.content(p) for p in pieces])
    else:
        for piece in pieces:
            await generations.publish(generation_id, claim.attempt, [events.content(piece)])
    entries = await generations.redis.xrange(generations.keys(generation_id).events)
    return generation_id, [str(entry_id) for entry_id, _ in entries]


async def _state(generations: Generations, generation_id: str) -> GenerationState:
    state = await generations.get(generation_id)
    assert state is not None
    return state


async def _trimmed(redis: Redis, generations: Generations) -> tuple[str, list[str]]:
    """Five events, the first two trimmed away with XTRIM MINID (as MAXLEN would)."""
    generation_id, ids = await _stream(generations, ["p1", "p2", "p3", "p4", "p5"])
    assert len(ids) == 5
    removed = await redis.xtrim(generations.keys(generation_id).events, minid=ids[2], approximate=False)
    assert removed == 2
    return generation_id, ids


def _between(low: str, label: str, high: str) -> bool:
    low_parts, label_parts, high_parts = parse_stream_id(low), parse_stream_id(label), parse_stream_id(high)
    assert low_parts is not None and label_parts is not None and high_parts is not None
    return low_parts < label_parts < high_parts


def test_resume_point_header_wins_over_query() -> None:
    assert resume_point("5-1", "3-0") == "5-1"


def test_resume_point_falls_back_to_query() -> None:
    assert resume_point(None, "3-0") == "3-0"
    assert resume_point("", "3-0") == "3-0"


def test_resume_point_none_when_absent() -> None:
    assert resume_point(None, None) is None
    assert resume_point("", "") is None


def test_resume_point_normalises_whitespace_and_leading_zeros() -> None:
    assert resume_point(" 1732512345678-0 ", None) == "1732512345678-0"
    assert resume_point("0005-07", None) == "5-7"


@pytest.mark.parametrize(
    ("header", "query"),
    [("abc", None), (None, "1-"), ("1-2-3", None), (f"{2**64}-0", None), ("bogus", "1-0")],
)
def test_resume_point_rejects_malformed_ids_with_400(header: str | None, query: str | None) -> None:
    with pytest.raises(ApiError) as raised:
        resume_point(header, query)
    assert raised.value.status == 400
    assert raised.value.code == "invalid_last_event_id"


@pytest.mark.parametrize(
    ("resume", "terminal", "expected"),
    [
        ("5-0", "5-0", True),
        ("5-1", "5-0", True),
        ("6-0", "5-9", True),
        ("5-0", "5-1", False),
        ("4-99", "5-0", False),
        ("10-0", "9-0", True),  # numeric, not lexicographic
        ("9-0", "10-0", False),
        ("bogus", "5-0", False),
        ("5-0", "bogus", False),
    ],
)
def test_is_at_or_after(resume: str, terminal: str, expected: bool) -> None:
    assert is_at_or_after(resume, terminal) is expected


async def test_replay_plan_untrimmed_stream_has_no_synthetic_entry(generations: Generations) -> None:
    generation_id, ids = await _stream(generations, ["a", "b", "c"])
    state = await _state(generations, generation_id)
    key = generations.keys(generation_id).events
    assert await replay_plan(generations.redis, key, state, None) == ([], "0-0")
    assert await replay_plan(generations.redis, key, state, ids[1]) == ([], ids[1])


async def test_replay_plan_untrimmed_stream_written_in_one_publish_has_no_synthetic_entry(
    generations: Generations,
) -> None:
    # Nothing was trimmed, so a fresh subscriber must not be told its replay was truncated.
    generation_id, _ = await _stream(generations, ["a", "b", "c"], one_publish=True)
    state = await _state(generations, generation_id)
    key = generations.keys(generation_id).events
    assert await replay_plan(generations.redis, key, state, None) == ([], "0-0")


async def test_replay_plan_trimmed_inside_the_first_publish_is_not_a_silent_gap(
    redis: Redis, generations: Generations
) -> None:
    # The first publish wrote three events; the first two are trimmed. A fresh subscriber never saw them,
    # so it must be told (reset), not handed the rest as if it were the whole text.
    generation_id, ids = await _stream(generations, ["a", "b", "c"], one_publish=True)
    key = generations.keys(generation_id).events
    assert await redis.xtrim(key, minid=ids[2], approximate=False) == 2
    state = await _state(generations, generation_id)
    synthetic, after = await replay_plan(redis, key, state, None)
    assert [json.loads(raw)["type"] for _, raw in synthetic] == ["reset"]
    assert _between("0-0", after, ids[2])


async def test_replay_plan_without_any_event_reads_from_start(generations: Generations) -> None:
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {}, "anonymous")
    state = await _state(generations, generation_id)
    key = generations.keys(generation_id).events
    assert await replay_plan(generations.redis, key, state, None) == ([], "0-0")


async def test_replay_plan_trimmed_stream_without_resume_starts_with_reset(
    redis: Redis, generations: Generations
) -> None:
    generation_id, ids = await _trimmed(redis, generations)
    state = await _state(generations, generation_id)
    assert state.first_id == ids[0]
    synthetic, after = await replay_plan(redis, generations.keys(generation_id).events, state, None)
    assert len(synthetic) == 1
    label, raw = synthetic[0]
    assert after == label
    assert _between("0-0", label, ids[2])
    assert _between(ids[1], label, ids[2]) or parse_stream_id(label) == parse_stream_id(ids[1])
    event = json.loads(raw)
    assert event == json.loads(events.reset(state.attempt, "replay_truncated"))
    assert event["type"] == "reset"


async def test_replay_plan_resume_older_than_oldest_retained_gets_reset(redis: Redis, generations: Generations) -> None:
    generation_id, ids = await _trimmed(redis, generations)
    state = await _state(generations, generation_id)
    synthetic, after = await replay_plan(redis, generations.keys(generation_id).events, state, ids[0])
    assert len(synthetic) == 1
    label = synthetic[0][0]
    assert after == label
    assert _between(ids[0], label, ids[2])
    assert json.loads(synthetic[0][1])["type"] == "reset"


@pytest.mark.parametrize("resume_index", [2, 3, 4])
async def test_replay_plan_resume_at_or_after_oldest_retained_has_no_synthetic_entry(
    redis: Redis, generations: Generations, resume_index: int
) -> None:
    generation_id, ids = await _trimmed(redis, generations)
    state = await _state(generations, generation_id)
    resume = ids[resume_index]
    assert await replay_plan(redis, generations.keys(generation_id).events, state, resume) == ([], resume)


async def test_replay_plan_after_xdel_of_the_first_entries_gets_reset(redis: Redis, generations: Generations) -> None:
    generation_id, ids = await _stream(generations, ["p1", "p2", "p3", "p4", "p5"])
    key = generations.keys(generation_id).events
    assert await redis.xdel(key, ids[0], ids[1]) == 2
    state = await _state(generations, generation_id)
    synthetic, after = await replay_plan(redis, key, state, None)
    assert [label for label, _ in synthetic] == [after]
    assert _between("0-0", after, ids[2])


async def test_frames_send_synthetic_entries_then_the_stream_until_terminal(
    redis: Redis, generations: Generations
) -> None:
    generation_id, ids = await _trimmed(redis, generations)
    state = await _state(generations, generation_id)
    done = await generations.publish(generation_id, state.attempt, [events.error(ErrorCode.INTERNAL)], "error")
    keys = generations.keys(generation_id)
    synthetic, after = await replay_plan(redis, keys.events, state, None)
    body = b"".join([chunk async for chunk in frames(redis, keys, synthetic, after, 100, None)])
    sent_ids = [line.removeprefix(b"id: ").decode() for line in body.split(b"\n") if line.startswith(b"id: ")]
    assert sent_ids == [after, ids[2], ids[3], ids[4], done.last_id]
    sent = [json.loads(line.removeprefix(b"data: ")) for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert [event["type"] for event in sent] == ["reset", "content", "content", "content", "error"]
    assert [event["data"] for event in sent[1:4]] == ["p3", "p4", "p5"]


def test_encode_entries_produces_id_and_data_frames() -> None:
    entries = [("1-0", events.content("héllo\nworld")), ("1-1", events.done("héllo\nworld", "stop", None))]
    encoded = encode_entries(entries)
    expected = "".join(f"id: {entry_id}\ndata: {raw}\n\n" for entry_id, raw in entries).encode("utf-8")
    assert encoded == expected
    assert encoded.startswith(b'id: 1-0\ndata: {"type":"content","data":"h\xc3\xa9llo\\nworld"}\n\n')
    assert encoded.count(b"\n\n") == 2
    assert encoded.endswith(b"\n\n")


def test_encode_entries_of_nothing_is_empty() -> None:
    assert encode_entries([]) == b""
