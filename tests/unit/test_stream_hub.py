"""The per-process stream reader: every subscriber gets exactly the entries after its resume point, in order,
whenever it joins, with one Redis connection per shard (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from api.stream_hub import StreamHub, _before, _later, node_url
from shared import events
from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.state import Generations
from shared.streams import Entry, read_range
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture(params=[16, 0], ids=["few-read-in-wait", "all-through-doorbells"])
async def hub_setup(
    redis_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[StreamHub, Generations, Redis]]:
    # Both ways an entry reaches the reader: in the doorbell wait's own reply (a few streams), or named by a
    # ring and read after it (many streams, which the tests here stand in for with a limit of 0).
    monkeypatch.setattr("api.stream_hub._IN_WAIT", request.param)
    async with _started(StreamHub, redis_url, shards=2) as setup:
        yield setup


HubType = TypeVar("HubType", bound=StreamHub)


@contextlib.asynccontextmanager
async def _started(
    hub_type: type[HubType], redis_url: str, shards: int
) -> AsyncIterator[tuple[HubType, Generations, Redis]]:
    # A long BLOCK: a subscriber that had to wait for it to time out would hit the test's own deadline.
    settings = Settings(redis_url=redis_url, key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=30_000)
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = hub_type(settings, streams, shards)
    hub.start()
    try:
        yield hub, Generations(streams, settings), streams
    finally:
        await hub.stop()
        await streams.aclose()


async def _running(generations: Generations) -> tuple[str, int]:
    generation_id = new_generation_id()
    request = StoredRequest(messages=[{"role": "user", "content": "x"}], model="m")
    await generations.create(generation_id, request, {}, "anonymous")
    return generation_id, (await generations.claim(generation_id)).attempt


async def _collect(
    hub: StreamHub, generations: Generations, generation_id: str, after: str, received: list[Entry] | None = None
) -> list[Entry]:
    """Every entry the subscriber gets, also appended to `received` as they come."""
    received = [] if received is None else received
    async for batch in hub.follow(generations.keys(generation_id), after):
        received += batch
    return received


async def test_subscriber_gets_backlog_then_live_entries_until_terminal(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, redis = hub_setup
    generation_id, attempt = await _running(generations)
    await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")])
    reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
    await asyncio.sleep(0.05)
    await generations.publish(generation_id, attempt, [events.content("c")])
    await generations.publish(generation_id, attempt, [events.done("abc", "stop", None)], "done")
    received = await asyncio.wait_for(reader, 5)
    assert received == await read_range(redis, generations.keys(generation_id).events)


class _CountingHub(StreamHub):
    backlog_reads = 0

    async def read_backlog(self, key: str, after: str) -> list[Entry]:
        self.backlog_reads += 1
        return await super().read_backlog(key, after)


async def test_clients_joining_together_share_one_backlog_read_and_get_everything(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=30_000)
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = _CountingHub(settings, streams, shards=1)
    hub.start()
    generations = Generations(streams, settings)
    try:
        generation_id, attempt = await _running(generations)
        await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")])
        first: list[Entry] = []
        early = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0", first))
        async with asyncio.timeout(5):
            while len(first) < 2:  # the reader has delivered both: the key's position is past them
                await asyncio.sleep(0.01)
        late = [asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0")) for _ in range(50)]
        async with asyncio.timeout(5):
            while hub.backlog_reads == 0:
                await asyncio.sleep(0.01)
        await generations.publish(generation_id, attempt, [events.done("ab", "stop", None)], "done")
        everything = await read_range(streams, generations.keys(generation_id).events)
        assert all(got == everything for got in await asyncio.wait_for(asyncio.gather(early, *late), 5))
        assert hub.backlog_reads == 1
    finally:
        await hub.stop()
        await streams.aclose()


async def test_subscribers_joining_at_random_moments_see_no_gap_and_no_duplicate(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, redis = hub_setup
    generation_id, attempt = await _running(generations)
    rng = random.Random(11)
    published: list[str] = []
    readers: list[tuple[str, asyncio.Task[list[Entry]]]] = []

    for index in range(120):
        result = await generations.publish(generation_id, attempt, [events.content(f"p{index}")])
        published.append(result.last_id)
        if index % 10 == 3:
            # Join from the start, from a random point already passed, or from the newest entry.
            after = rng.choice(["0-0", rng.choice(published), published[-1]])
            readers.append((after, asyncio.ensure_future(_collect(hub, generations, generation_id, after))))
        await asyncio.sleep(rng.random() * 0.004)
    await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")

    everything = await read_range(redis, generations.keys(generation_id).events)
    for after, task in readers:
        received = await asyncio.wait_for(task, 10)
        expected = [entry for entry in everything if _after(entry[0], after)]
        assert received == expected, f"subscriber from {after}"


async def test_a_new_key_is_read_at_once_while_the_reader_blocks_on_others(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, _ = hub_setup
    # Keep every shard's reader blocked (30 s) on a quiet generation.
    quiet_id, _ = await _running(generations)
    quiet = [asyncio.ensure_future(_collect(hub, generations, quiet_id, "0-0"))]
    await asyncio.sleep(0.1)
    for _ in range(4):
        generation_id, attempt = await _running(generations)
        reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
        await asyncio.sleep(0.02)
        await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")
        assert len(await asyncio.wait_for(reader, 5)) == 1
    for task in quiet:
        task.cancel()


async def test_follow_ends_when_the_generation_expires(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=200)
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = StreamHub(settings, streams, shards=1)
    hub.start()
    try:
        generations = Generations(streams, settings)
        generation_id, _ = await _running(generations)
        reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
        await asyncio.sleep(0.1)
        await streams.delete(generations.keys(generation_id).state)
        assert await asyncio.wait_for(reader, 5) == []
    finally:
        await hub.stop()
        await streams.aclose()


def _after(entry_id: str, after: str) -> bool:
    a = tuple(int(p) for p in entry_id.split("-"))
    b = tuple(int(p) for p in after.split("-"))
    return a > b


def _reading(hub: StreamHub, key: str, position: str) -> bool:
    """The reader has started a read that includes `key` at `position` (a positive signal, no sleep)."""
    return any(
        (followed := shard.followed.get(key)) is not None
        and followed.last_id == position
        and shard.read_version == shard.version
        for shard in hub.shards
    )


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


async def test_a_resume_point_past_the_end_holds_back_no_other_subscriber(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, redis = hub_setup
    generation_id, attempt = await _running(generations)
    keys = generations.keys(generation_id)
    written = await generations.publish(generation_id, attempt, [events.content("a"), events.content("b")])
    now_ms = int(written.last_id.split("-")[0])
    future = f"{now_ms + 3_600_000}-0"
    # A client sends an id an hour ahead: it becomes the first subscriber of the key on this process.
    ahead = asyncio.ensure_future(_collect(hub, generations, generation_id, future))
    await _until(lambda: _reading(hub, keys.events, future))
    seen: list[Entry] = []
    behind = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0", seen))
    await _until(lambda: len(seen) == 2)
    await generations.publish(generation_id, attempt, [events.content("c")])
    # The terminal event lands after the made-up id: the client from the future gets exactly that one.
    terminal = f"{now_ms + 3_600_001}-0"
    await generations.publish(generation_id, attempt, [events.done("abc", "stop", None)], "done", terminal_id=terminal)

    everything = await read_range(redis, keys.events)
    assert [entry_id for entry_id, _ in everything][-1] == terminal
    assert await asyncio.wait_for(behind, 5) == everything
    assert await asyncio.wait_for(ahead, 5) == everything[-1:]


async def test_a_subscriber_past_the_end_alone_ends_with_the_generation(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, _ = hub_setup
    hub.settings = hub.settings.model_copy(update={"sse_read_block_ms": 200})
    generation_id, attempt = await _running(generations)
    written = await generations.publish(generation_id, attempt, [events.content("a")])
    future = f"{int(written.last_id.split('-')[0]) + 3_600_000}-0"
    ahead = asyncio.ensure_future(_collect(hub, generations, generation_id, future))
    await _until(lambda: _reading(hub, generations.keys(generation_id).events, future))
    await generations.publish(generation_id, attempt, [events.done("a", "stop", None)], "done")
    # Its terminal event is before the id it claims to have seen: nothing to send, and the stream ends.
    assert await asyncio.wait_for(ahead, 5) == []


async def test_a_read_in_flight_is_not_applied_to_a_subscriber_that_joined_during_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(redis_url=redis_url, key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=30_000)
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = StreamHub(settings, streams, shards=1)
    shard = hub.shards[0]
    held, release = asyncio.Event(), asyncio.Event()
    hold = True
    real_xread = shard.xread

    async def xread_held_by_the_test(positions: dict[str, str], block_ms: int | None = None) -> Any:
        reply = await real_xread(positions, block_ms)
        if hold and reply:
            held.set()
            await release.wait()
        return reply

    monkeypatch.setattr(shard, "xread", xread_held_by_the_test)
    hub.start()
    try:
        generations = Generations(streams, settings)
        generation_id, attempt = await _running(generations)
        keys = generations.keys(generation_id)
        e1 = (await generations.publish(generation_id, attempt, [events.content("1")])).last_id
        e2 = (await generations.publish(generation_id, attempt, [events.content("2")])).last_id
        # The only subscriber follows from e2; the reader's XREAD from e2 gets e3, and the test holds the reply.
        leaving = asyncio.ensure_future(_collect(hub, generations, generation_id, e2))
        await _until(lambda: _reading(hub, keys.events, e2))
        await generations.publish(generation_id, attempt, [events.content("3")])
        await asyncio.wait_for(held.wait(), 5)
        # Meanwhile the last subscriber leaves and a new one joins from e1.
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        joining = asyncio.ensure_future(_collect(hub, generations, generation_id, e1))
        await _until(lambda: keys.events in shard.followed and shard.followed[keys.events].last_id == e1)
        hold = False
        release.set()
        await generations.publish(generation_id, attempt, [events.done("123", "stop", None)], "done")
        everything = await read_range(streams, keys.events)
        assert await asyncio.wait_for(joining, 5) == [entry for entry in everything if _after(entry[0], e1)]
    finally:
        await hub.stop()
        await streams.aclose()


async def test_a_silent_connection_is_dropped_and_every_stream_reads_on(redis_url: str) -> None:
    base, db = redis_url.rsplit("/", 1)
    host, port = base.rsplit("//", 1)[1].split(":")
    proxy = await TcpProxy(host, int(port)).start()
    # The reader goes through the proxy; the test writes directly.
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{proxy.port}/{db}", key_prefix="h" + uuid.uuid4().hex[:8], sse_read_block_ms=300
    )
    streams = Redis.from_url(redis_url, decode_responses=True)
    hub = StreamHub(settings, streams, shards=1)
    hub.start()
    try:
        generations = Generations(streams, settings)
        generation_id, attempt = await _running(generations)
        received: asyncio.Queue[list[Entry]] = asyncio.Queue()

        async def watch() -> None:
            async for batch in hub.follow(generations.keys(generation_id), "0-0"):
                received.put_nowait(batch)

        watcher = asyncio.ensure_future(watch())
        await generations.publish(generation_id, attempt, [events.content("a")])
        assert len(await asyncio.wait_for(received.get(), 5)) == 1
        connections = proxy.connections
        # The reader's connection goes half-open: its XREAD's reply never comes.
        proxy.blackhole()
        await generations.publish(generation_id, attempt, [events.content("b")])
        await generations.publish(generation_id, attempt, [events.done("ab", "stop", None)], "done")
        await asyncio.wait_for(watcher, 15)
        rest = [entry for batch in [received.get_nowait() for _ in range(received.qsize())] for entry in batch]
        assert rest == (await read_range(streams, generations.keys(generation_id).events))[1:]
        assert proxy.connections > connections  # it reconnected
    finally:
        await hub.stop()
        await streams.aclose()
        await proxy.close()


def test_a_cluster_node_url_keeps_the_scheme_credentials_and_options() -> None:
    url = "rediss+cluster://user:secret@node-a:7000/?ssl_cert_reqs=none"
    assert node_url(url, "10.0.0.2", 7001) == "rediss://user:secret@10.0.0.2:7001?ssl_cert_reqs=none"
    assert node_url("redis+cluster://node-a:7000", "10.0.0.3", 7002) == "redis://10.0.0.3:7002"


class _RecordingHub(StreamHub):
    """Records the events streams of every read without waiting (not the doorbells read with them; a doorbell
    wait also reads some streams itself)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[set[str]] = []
        for shard in self.shards:
            real = shard.xread

            async def recorded(
                streams: dict[str, str], block_ms: int | None = None, real: Any = real, shard: Any = shard
            ) -> Any:
                if block_ms is None:
                    self.reads.append(set(streams) - set(shard.bells))
                return await real(streams, block_ms)

            shard.xread = recorded  # type: ignore[method-assign]


@pytest.fixture
async def recording_hub(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[_RecordingHub, Generations, Redis]]:
    # No read of every stream during the test, only the first one: what is read is what the doorbell named.
    monkeypatch.setattr("api.stream_hub._RESYNC_S", 60.0)
    async with _started(_RecordingHub, redis_url, shards=1) as setup:
        yield setup


async def test_a_write_is_read_alone_however_many_streams_are_followed(
    recording_hub: tuple[_RecordingHub, Generations, Redis],
) -> None:
    hub, generations, _ = recording_hub
    running = [await _running(generations) for _ in range(30)]
    queues: list[asyncio.Queue[list[Entry]]] = []
    followers: list[asyncio.Task[None]] = []
    for generation_id, attempt in running:
        queue, follower = _follower(hub, generations, generation_id)
        queues.append(queue)
        followers.append(follower)
        await generations.publish(generation_id, attempt, [events.content("first")])
    for queue in queues:  # every subscriber has joined and been served
        assert len(await asyncio.wait_for(queue.get(), 5)) == 1
    # One more write, served through its doorbell: the wait that saw its ring took every earlier one with it.
    await generations.publish(running[0][0], running[0][1], [events.content("sync")])
    assert len(await asyncio.wait_for(queues[0].get(), 5)) == 1
    hub.reads.clear()
    (generation_id, attempt), queue = running[7], queues[7]
    await generations.publish(generation_id, attempt, [events.content("second")])
    assert len(await asyncio.wait_for(queue.get(), 5)) == 1
    assert hub.reads == [{generations.keys(generation_id).events}]
    for follower in followers:
        follower.cancel()


async def test_a_joining_streams_first_entry_comes_with_the_doorbell_wait_itself(
    recording_hub: tuple[_RecordingHub, Generations, Redis],
) -> None:
    # Time to first token: no second round trip after the ring for a stream that has just joined.
    hub, generations, redis = recording_hub
    generation_id, attempt = await _running(generations)
    key, shard = generations.keys(generation_id).events, hub.shards[0]
    queue, follower = _follower(hub, generations, generation_id)
    await _until(lambda: {key} in hub.reads)  # read at once on joining: nothing yet
    async with asyncio.timeout(5):  # then the reader waits, blocked in Redis
        while not (shard.client_id and "b" in (await redis.client_list(client_id=[str(shard.client_id)]))[0]["flags"]):
            await asyncio.sleep(0.002)
    hub.reads.clear()
    await generations.publish(generation_id, attempt, [events.content("first")])
    assert len(await asyncio.wait_for(queue.get(), 5)) == 1
    assert hub.reads == []
    follower.cancel()


async def test_more_than_one_reads_worth_at_once_all_arrives_without_waiting_for_a_full_read(
    recording_hub: tuple[_RecordingHub, Generations, Redis],
) -> None:
    hub, generations, redis = recording_hub
    generation_id, attempt = await _running(generations)
    reader = asyncio.ensure_future(_collect(hub, generations, generation_id, "0-0"))
    await _until(lambda: generations.keys(generation_id).events in hub.shards[0].followed and bool(hub.reads))
    await generations.publish(generation_id, attempt, [events.content(str(n)) for n in range(1_200)])
    await generations.publish(generation_id, attempt, [events.done("", "stop", None)], "done")
    assert await asyncio.wait_for(reader, 5) == await read_range(redis, generations.keys(generation_id).events)


async def test_a_write_that_rings_no_doorbell_arrives_with_the_next_full_read(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    # A writer of an older version appends without ringing: the once-a-second read of every stream finds it.
    hub, generations, redis = hub_setup
    generation_id, _ = await _running(generations)
    queue, follower = _follower(hub, generations, generation_id)
    keys = generations.keys(generation_id)
    await _until(lambda: any(keys.events in shard.followed for shard in hub.shards))
    entry_id = await redis.xadd(keys.events, {"e": events.content("unrung")})
    assert await asyncio.wait_for(queue.get(), 5) == [(entry_id, events.content("unrung"))]
    follower.cancel()


def _follower(
    hub: StreamHub, generations: Generations, generation_id: str
) -> tuple[asyncio.Queue[list[Entry]], asyncio.Task[None]]:
    """A subscriber from the start, its batches put in the queue as they come."""
    queue: asyncio.Queue[list[Entry]] = asyncio.Queue()

    async def follow() -> None:
        async for batch in hub.follow(generations.keys(generation_id), "0-0"):
            queue.put_nowait(batch)

    return queue, asyncio.ensure_future(follow())


def test_a_rings_id_compares_with_a_position_as_stream_ids_do() -> None:
    ids = ["0-0", "0", "5-0", "10-0", "1-1", "1733112345000-0", "1733112345000-9", "1733112345000-10",
           "1733112345001-0", "99999999999999-0", "not-an-id"]  # fmt: skip
    for entry_id, position in itertools.product(ids, ids):
        assert _later(entry_id, position) == _before(position, entry_id), (entry_id, position)


async def test_a_ring_the_reader_does_not_understand_stops_no_stream(
    hub_setup: tuple[StreamHub, Generations, Redis],
) -> None:
    hub, generations, redis = hub_setup
    generation_id, attempt = await _running(generations)
    keys = generations.keys(generation_id)
    queue, follower = _follower(hub, generations, generation_id)
    await _until(lambda: any(keys.events in shard.followed for shard in hub.shards))
    await redis.xadd(keys.bell, {"k": keys.events})  # no id: not a ring this reader writes
    for text in ("a", "b"):
        written = await generations.publish(generation_id, attempt, [events.content(text)])
        assert await asyncio.wait_for(queue.get(), 5) == [(written.last_id, events.content(text))]
    follower.cancel()
