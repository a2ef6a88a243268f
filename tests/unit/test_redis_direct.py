"""shared.redis_direct.DirectScript on a real Redis: replies, a script Redis lacks, cancellation, timeout."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from redis.asyncio import Connection, ConnectionPool, Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_direct import TURNS_PER_CALL, DirectScript

ECHO = "return {KEYS[1], ARGV[1], ARGV[2]}"
# Holds Redis for ARGV[2] ms, appends ARGV[1] to the list KEYS[1], then answers ARGV[1].
SLOW_ECHO = """
local t = redis.call('TIME')
local until_us = (t[1] * 1000000 + t[2]) + tonumber(ARGV[2]) * 1000
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= until_us
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 60)
return ARGV[1]
"""


def _unique(script: str) -> str:
    """A script Redis has never cached: its first EVALSHA answers NOSCRIPT."""
    return f"{script}\n-- {uuid.uuid4().hex}"


async def test_calls_answer_like_redis_py_and_reuse_their_connections(redis: Redis, redis_url: str) -> None:
    name = f"direct-{uuid.uuid4().hex[:8]}"
    named = Redis.from_url(redis_url, decode_responses=True, client_name=name)  # only its pool is used
    direct = DirectScript(named.connection_pool, _unique(ECHO), timeout_s=5)
    slow = DirectScript(named.connection_pool, SLOW_ECHO, timeout_s=5)
    marker = f"direct-test:{uuid.uuid4().hex}"
    try:
        assert await direct(["k"], ["a", 1]) == ["k", "a", "1"]  # first call: NOSCRIPT, then EVAL
        assert await _named(redis, name) == 1
        replies = [await direct([f"k{i}"], [f"v{i}", i]) for i in range(20)]
        assert replies == [[f"k{i}", f"v{i}", str(i)] for i in range(20)]
        assert await _named(redis, name) == 1  # one connection, taken back after each call
        # Each call holds Redis 100 ms, so all five are in flight at once: one connection each.
        assert await asyncio.gather(*(slow([marker], [f"c{i}", 100]) for i in range(5))) == [f"c{i}" for i in range(5)]
        assert await _named(redis, name) == 6
        await asyncio.gather(*(slow([marker], [f"d{i}", 100]) for i in range(5)))
        assert await _named(redis, name) == 6  # the same ones again
        await direct.aclose()
        await slow.aclose()
        await _until_named(redis, name, 0)
    finally:
        await redis.delete(marker)
        await direct.aclose()
        await slow.aclose()
        await named.aclose()


async def test_a_nil_reply_is_a_reply(redis: Redis) -> None:
    direct = DirectScript(redis.connection_pool, "return nil", timeout_s=5)
    try:
        assert await direct(["k"], []) is None
    finally:
        await direct.aclose()


class _Recorded(Connection):
    """Notes the event loop's turn at each script call sent (class-level: the pool makes the connections)."""

    turns: list[int] = []
    clock: list[int] = [0]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if b"EVALSHA" in b"".join(command)[:40]:  # not the handshake's commands
            _Recorded.turns.append(_Recorded.clock[0])
        await super().send_packed_command(command, check_health)


async def test_concurrent_calls_start_one_at_a_time_turns_of_the_loop_apart(redis: Redis, redis_url: str) -> None:
    loop = asyncio.get_running_loop()
    ticking = True

    def tick() -> None:  # counts the loop's turns
        _Recorded.clock[0] += 1
        if ticking:
            loop.call_soon(tick)

    name = f"direct-{uuid.uuid4().hex[:8]}"
    pool = ConnectionPool.from_url(redis_url, decode_responses=True, connection_class=_Recorded, client_name=name)
    direct = DirectScript(pool, SLOW_ECHO, timeout_s=5)
    marker = f"direct-test:{uuid.uuid4().hex}"
    # Ten calls in flight at once (each holds Redis 100 ms): Redis knows the script and ten connections are open,
    # so no measured call sends twice or waits for a handshake after leaving the gate.
    await asyncio.gather(*(direct([marker], ["warm", 100]) for _ in range(10)))
    assert await _named(redis, name) == 10
    _Recorded.turns.clear()
    tick()
    try:
        replies = await asyncio.gather(*(direct([marker], [str(i), 0]) for i in range(10)))
        assert replies == [str(i) for i in range(10)]  # all served, in order
        turns = _Recorded.turns
        assert len(turns) == 10
        assert all(later - earlier >= TURNS_PER_CALL for earlier, later in itertools.pairwise(turns)), turns
    finally:
        ticking = False
        await redis.delete(marker)
        await direct.aclose()
        await pool.aclose()


async def test_a_script_error_reaches_the_caller_and_the_next_call_still_works(redis: Redis) -> None:
    direct = DirectScript(redis.connection_pool, "return redis.error_reply('bad ' .. ARGV[1])", timeout_s=5)
    echo = DirectScript(redis.connection_pool, ECHO, timeout_s=5)
    try:
        with pytest.raises(ResponseError, match="bad input"):
            await direct(["k"], ["input"])
        with pytest.raises(ResponseError, match="bad again"):
            await direct(["k"], ["again"])
        assert await echo(["k"], ["ok", 0]) == ["k", "ok", "0"]
    finally:
        await direct.aclose()
        await echo.aclose()


async def test_a_call_cancelled_before_its_reply_does_not_hand_that_reply_to_the_next(redis: Redis) -> None:
    direct = DirectScript(redis.connection_pool, SLOW_ECHO, timeout_s=5)
    marker = f"direct-test:{uuid.uuid4().hex}"
    try:
        assert await direct([marker], ["warm", 0]) == "warm"
        first = asyncio.ensure_future(direct([marker], ["first", 300]))
        for _ in range(TURNS_PER_CALL + 3):  # past the gate: the request is sent, its reply is 300 ms away
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # Had the cancelled call's connection gone back to the free list, this would read "first".
        assert await direct([marker], ["second", 0]) == "second"
        # Redis ran the cancelled call (its reply was on the wire): the case under test.
        assert await redis.lrange(marker, 0, -1) == ["warm", "first", "second"]  # type: ignore[misc]
    finally:
        await redis.delete(marker)
        await direct.aclose()


async def test_calls_after_redis_closed_the_kept_connections_go_through_on_new_ones(
    redis: Redis, redis_url: str
) -> None:
    name = f"direct-{uuid.uuid4().hex[:8]}"
    named = Redis.from_url(redis_url, decode_responses=True, client_name=name)  # only its pool is used
    direct = DirectScript(named.connection_pool, SLOW_ECHO, timeout_s=5)
    marker = f"direct-test:{uuid.uuid4().hex}"
    try:
        await asyncio.gather(*(direct([marker], [str(i), 50]) for i in range(3)))  # in flight at once
        kept = [info["id"] for info in await redis.client_list() if info["name"] == name]
        assert len(kept) == 3
        for client_id in kept:  # as a Redis restart or an idle timeout would
            await redis.client_kill_filter(_id=client_id)
        assert await direct([marker], ["after", 0]) == "after"
        assert await asyncio.gather(*(direct([marker], [str(i), 0]) for i in range(3))) == ["0", "1", "2"]
    finally:
        await redis.delete(marker)
        await direct.aclose()
        await named.aclose()


@pytest.mark.parametrize(
    ("options", "stage"),
    [({}, "the handshake"), ({"lib_name": None, "lib_version": None}, "the command")],
    ids=["handshake", "command"],
)
async def test_a_server_that_never_answers_times_out_as_a_redis_timeout(options: dict[str, Any], stage: str) -> None:
    """redis-py's handshake sends CLIENT SETINFO unless told not to: both waits are bounded."""
    received: list[bytes] = []
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        received.append(await reader.read(65536))

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis(host="127.0.0.1", port=port, **options)
    direct = DirectScript(redis.connection_pool, ECHO, timeout_s=0.3)
    try:
        with pytest.raises(RedisTimeoutError, match=r"no reply from Redis in 0\.3 s"):
            await direct(["k"], ["a", 1])
        assert len(accepted) == 1
        first = received[0].upper()
        assert (b"CLIENT" in first and b"EVALSHA" not in first) if stage == "the handshake" else b"EVALSHA" in first
    finally:
        await direct.aclose()
        await redis.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def _named(redis: Redis, name: str) -> int:
    return sum(1 for info in await redis.client_list() if info["name"] == name)


async def _until_named(redis: Redis, name: str, count: int) -> None:
    """Redis notices a closed connection a moment after the close: wait for it, bounded."""
    for _ in range(200):
        if await _named(redis, name) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{await _named(redis, name)} connections named {name}, not {count}")
