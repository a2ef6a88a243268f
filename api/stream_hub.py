"""Per-process stream reader: one connection per shard, waiting on its buckets' doorbells, fanned out in memory.

One XREAD per SSE client would hold one Redis connection per client. Here a shard's reader task holds one
connection for all its keys; subscribers get batches through in-process queues. Every script that appends to
an events stream also rings its bucket's doorbell: an entry in a stream of its own naming the stream written
and the write's last entry id (shared/lua.py). The reader blocks on its doorbells (and on a few streams
itself: all it follows while they are at most _IN_WAIT, else the newest without an entry yet), then reads
just the followed streams the rings name that have entries it has not read: a read costs Redis and this
process what moved, not every stream followed (a blocking XREAD over a thousand keys cost Redis about 0.6 ms
per call, over half its CPU at 1,000 live streams). Once a second, and after every reconnect, it reads every
followed stream anyway: a ring lost (trimmed while the reader was far behind, or never rung by a writer of an
older version) delays a stream by at most that much. A subscriber joining a key wakes the reader (CLIENT
UNBLOCK) so its key is read at once, with the doorbells.

Hand-over without gap or duplicate: a subscriber registers and notes the key's read position K in the same
step (no await in between, so the reader cannot move). Entries after K reach it through its queue; entries
from its resume point up to K it reads itself with XRANGE. Anything it receives twice is dropped by id.

Each subscriber filters by its own position, and the shared one never trusts a client: a key's first position
is the first subscriber's resume point, which may lie past the stream's end (a made-up Last-Event-ID), so until
the reader has read an entry for the key, a subscriber resuming from earlier lowers it instead of reading a
backlog up to it. A reply is applied to a key only if the key's position is still the one the read was sent
with: a read in flight when the position changed (lowered, or the key left and joined again) is discarded and
the next read starts from the new position.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError, RedisError

from shared.config import Settings
from shared.ids import parse_stream_id
from shared.keys import GenerationKeys
from shared.metrics import REDIS_ERRORS
from shared.redis_client import StreamsRedis, bounded_pool
from shared.redis_packing import pack_with_hiredis
from shared.streams import Entry, is_terminal, read_range
from shared.tasks import cancel_and_wait

log = logging.getLogger("sse_relay.api")
_READ_COUNT = 500
# At most one XREAD per shard this often while entries keep coming (see _Shard._gather_writes).
_READ_INTERVAL_S = 0.010
# Every followed stream is read at least this often, rung or not.
_RESYNC_S = 1.0
# Streams read in the doorbell wait itself, so that their entries arrive in its reply and not one round trip
# later: every followed stream while there are at most this many (light load: one round trip per event, as a
# plain blocking read), else the newest this many that have no entry yet (time to first token).
_IN_WAIT = 16


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[list[Entry]] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class _Followed:
    last_id: str
    # True once last_id is an entry the reader read: every entry up to it exists. Before that it is a client's
    # resume point, perhaps past the end, and a later subscriber must not read a backlog up to it.
    confirmed: bool = False
    subscribers: set[_Subscriber] = field(default_factory=set)


# Where a shard's reader connects: given one of its keys and whether the last try failed, a Redis URL.
Locate = Callable[[str, bool], Awaitable[str]]


class _Shard:
    """One reader task and its connection, for the keys that hash to this shard (on a Redis Cluster: the keys
    of one slot, read on the node that owns it)."""

    def __init__(self, locate: Locate, control: Callable[[str], Redis], block_ms: int) -> None:
        self.locate = locate
        self.control_for = control
        self.reader: Redis | None = None
        self.control: Redis | None = None
        self.block_ms = block_ms
        self.followed: dict[str, _Followed] = {}
        self.bells: dict[str, str] = {}  # doorbell -> the last entry id read; "" until placed after a connect
        self.dirty: set[str] = set()  # keys to read from their positions at once: joined, or lowered
        self.fresh: dict[str, None] = {}  # keys that joined and have no entry read yet, oldest first
        self.synced_at = -math.inf  # when every followed key was last read
        self.version = 0
        self.read_version = -1
        self.changed = asyncio.Event()
        self.client_id: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.waker: asyncio.Task[None] | None = None

    async def run(self) -> None:
        failed = False
        while True:
            try:
                if self.reader is None and self.followed:
                    await self._connect(failed)
                await self._read_once()
                failed = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # MOVED (the slot went to another node), a failover, a timeout: a fresh connection, to wherever
                # the key's slot is now, reading on from each key's position. Anything else (a reply it does not
                # expect) too: the shard's streams must not stop with the task.
                if isinstance(exc, (RedisError, OSError)):
                    log.warning("stream reader: %s; reconnecting", type(exc).__name__)
                    REDIS_ERRORS.inc()
                else:
                    log.exception("stream reader failed: %s; reconnecting", type(exc).__name__)
                await self.disconnect()
                if not failed and isinstance(exc, MovedError):
                    failed = True
                    continue
                failed = True
                await asyncio.sleep(0.5)

    async def _connect(self, failed: bool) -> None:
        url = await self.locate(next(iter(self.followed)), failed)
        # A dedicated connection: the blocking XREAD holds it, and CLIENT UNBLOCK needs its id. Its socket
        # timeout outlives the BLOCK: a reply that is that late means a dead or half-open connection, which
        # without a timeout would stall every stream of the shard for good.
        options = reader_options(min(self.block_ms, int(_RESYNC_S * 1000)))
        reader = Redis.from_url(url, decode_responses=True, single_connection_client=True, **options)
        pack_with_hiredis(reader.connection_pool)
        # XREAD's replies as Redis sends them: redis-py's default callback turns every entry's fields into a
        # dict, which was a quarter of the API's CPU at 1,000 busy streams (py-spy, BENCHMARKS.md).
        reader.set_response_callback("XREAD", _raw_reply)
        self.reader = reader
        self.control = self.control_for(url)
        self.client_id = int(await reader.client_id())

    async def disconnect(self) -> None:
        reader, self.reader, self.client_id = self.reader, None, None
        # Reconnected, the reader places every doorbell again and then reads every followed key.
        self.bells = dict.fromkeys(self.bells, "")
        self.synced_at = -math.inf
        if reader is not None:
            with contextlib.suppress(RedisError, OSError):
                await reader.aclose()

    async def _read_once(self) -> None:
        if not self.followed:
            self.changed.clear()
            await self.changed.wait()
            return
        self.read_version = self.version
        started = time.monotonic()
        if await self._step(started) and self.read_version == self.version:
            await self._gather_writes(started)

    def _apply(self, streams: dict[str, str], sent: dict[str, _Followed], response: Any) -> bool:
        """Hands each key's new entries to its subscribers -> whether there were any."""
        delivered = False
        for key, raw_entries in response or []:
            followed = self.followed.get(key)
            if followed is None or followed is not sent.get(key) or followed.last_id != streams[key]:
                continue  # the key left, came back or was lowered during the read: follow() marked it to read
            # Each entry is [id, [field, value, ...]]; events are written with the one field "e".
            batch = [(entry_id, fields[fields.index("e") + 1]) for entry_id, fields in raw_entries]
            followed.last_id = batch[-1][0]
            followed.confirmed = True
            self.fresh.pop(key, None)
            for subscriber in followed.subscribers:
                subscriber.queue.put_nowait(batch)
            delivered = True
            if len(raw_entries) >= _READ_COUNT:
                self.dirty.add(key)  # more than one read's worth: its doorbell entries are already read
        return delivered

    async def _step(self, now: float) -> bool:
        """One read: every followed key once a second (first of all after a connect), else those that joined or
        were lowered, else a wait for a ring; then the keys the doorbells named. A doorbell is placed at its end
        before any key of its bucket is read: whatever is written after that read rings past the place.
        -> whether the batching pause follows (_read)."""
        while unplaced := [bell for bell, last in self.bells.items() if not last]:
            await self._place(unplaced)  # again if a key of a new bucket joined meanwhile
        if now - self.synced_at >= _RESYNC_S:
            self.synced_at = now
            self.dirty.clear()
            return await self._read(list(self.followed))
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            return await self._read(dirty)
        block_ms = max(1, min(self.block_ms, int((self.synced_at + _RESYNC_S - now) * 1000)))
        return await self._read(self._in_wait(), block_ms)

    async def _place(self, bells: list[str]) -> None:
        assert self.reader is not None
        for bell in bells:
            last = await self.reader.xrevrange(bell, "+", "-", count=1)
            self.bells[bell] = last[0][0] if last else "0-0"

    async def _read(self, keys: Collection[str], block_ms: int | None = None) -> bool:
        """Reads `keys` and the doorbells together (waiting up to `block_ms` for either), then the followed
        keys the doorbells named with entries not yet read -> whether entries were delivered or rings named
        streams this process does not follow (either way the batching pause follows: rings for other
        processes' streams then wake this reader at most once per interval)."""
        bells = self.bells
        streams = {key: self.followed[key].last_id for key in keys if key in self.followed}
        sent = {key: self.followed[key] for key in streams}
        reply = await self.xread({**bells, **streams}, block_ms)
        rings: list[list[str]] = []
        read: list[Any] = []
        for name, entries in reply or []:
            if name in bells:
                bells[name] = entries[-1][0]
                rings.extend(fields for _, fields in entries)
                if len(entries) >= _READ_COUNT:
                    self.synced_at = -math.inf  # far behind: rings may be trimmed before they are read
            else:
                read.append([name, entries])
        delivered = self._apply(streams, sent, read)
        rung, foreign = self._rung(rings)
        rung = {key: position for key, position in rung.items() if key not in self.dirty}
        if rung:
            named = {key: self.followed[key] for key in rung}
            delivered = self._apply(rung, named, await self.xread(rung)) or delivered
        return delivered or foreign

    def _rung(self, rings: list[list[str]]) -> tuple[dict[str, str], bool]:
        """-> (the followed keys these rings name with an entry after their position, whether any ring named a
        key this process does not follow). A ring carries the id of the write's last entry: one for an entry
        already read, in this reply or an earlier one, is skipped."""
        rung: dict[str, str] = {}
        foreign = False
        for fields in rings:
            # Written as k <key> i <id> (shared/lua.py): read in place, one ring per event at busy times.
            if len(fields) < 4:
                continue  # not a ring of this version: the once-a-second read covers its stream
            followed = self.followed.get(fields[1])
            if followed is None:
                foreign = True
            elif _later(fields[3], followed.last_id):
                rung[fields[1]] = followed.last_id
        return rung, foreign

    def _in_wait(self) -> list[str]:
        """The keys the wait reads itself: every followed one while they are few, else the newest without an
        entry (`fresh` holds exactly the followed keys without one)."""
        if len(self.followed) <= _IN_WAIT:
            return list(self.followed)
        return self._newest_fresh()

    def _newest_fresh(self) -> list[str]:
        return [key for key in itertools.islice(reversed(self.fresh), _IN_WAIT) if key in self.followed]

    async def xread(self, streams: dict[str, str], block_ms: int | None = None) -> Any:
        """One read of these streams, each after its position, waiting up to `block_ms` for an entry if given
        (a seam the tests use to hold a reply)."""
        assert self.reader is not None
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        # The command itself, not redis-py's xread(): that one rebuilds the argument list key by key in Python.
        args = ("XREAD", "COUNT", _READ_COUNT, *block, "STREAMS", *streams, *streams.values())
        return await cast(Any, self.reader).execute_command(*args)

    async def _gather_writes(self, read_started: float) -> None:
        """Busy streams: let writes pile up briefly so the next XREAD carries many of them. Without this pause
        the reader issued about one XREAD per write (half a command per token at 20 busy streams). An event
        waits at most _READ_INTERVAL_S more. A new subscriber ends the pause at once (wake() sets `changed`, or
        unblocks the read below), and so does the first entry of a stream that has none yet: meanwhile the
        reader waits on the newest _IN_WAIT of those, so a first event (time to first token) is not held."""
        pause = _READ_INTERVAL_S - (time.monotonic() - read_started)
        if pause <= 0:
            return
        fresh = self._newest_fresh()
        if fresh:
            streams = {key: self.followed[key].last_id for key in fresh}
            sent = {key: self.followed[key] for key in fresh}
            self._apply(streams, sent, await self.xread(streams, max(1, int(pause * 1000))))
            return
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), pause)

    def add(self, key: str, bell: str) -> None:
        """A key joined, or its position was lowered: read it from its position now."""
        self.bells.setdefault(bell, "")
        self.dirty.add(key)
        self.fresh.pop(key, None)
        self.fresh[key] = None  # the newest
        self.wake()

    def wake(self) -> None:
        """Make the reader include a new key now, not after its current BLOCK times out.

        One waker per shard at a time: a burst of new subscribers bumps the version, and the one running
        waker keeps unblocking until the reader has started a read that includes all of them.
        """
        self.version += 1
        self.changed.set()
        if self.waker is None or self.waker.done():
            self.waker = asyncio.ensure_future(self._unblock())

    async def _unblock(self) -> None:
        for _ in range(1000):
            if self.read_version >= self.version or self.client_id is None or self.control is None:
                return
            try:
                unblocked = await self.control.client_unblock(self.client_id)
            except (RedisError, OSError):
                return
            # Unblocked, or not blocked yet (the XREAD is on its way): check the version again shortly.
            await asyncio.sleep(0 if unblocked else 0.001)


class StreamHub:
    """Subscriptions to generation streams for one API process.

    A generation's keys carry one of GENERATION_BUCKETS hash tags, its bucket, with the bucket's doorbell. On
    a plain Redis, `shards` readers share the buckets. On a Redis Cluster, one reader per bucket in use (each
    bucket is one slot), connected to the node that owns it: one XREAD can only cover keys of one slot, so a
    process holds at most GENERATION_BUCKETS readers.
    """

    def __init__(self, settings: Settings, streams: StreamsRedis, shards: int) -> None:
        self.settings = settings
        self.streams = streams
        self.cluster = streams if isinstance(streams, RedisCluster) else None
        # One connection per node for every shard's CLIENT UNBLOCK: while clients keep joining, a waker sends
        # them back to back, and from the process's command pool they held half of it (requests then waited
        # for a connection past its timeout: 503s at 5,000 streams).
        self._controls: dict[str, Redis] = {}
        self.shards: list[_Shard] = []
        self._by_bucket: dict[int, _Shard] = {}
        self._started = False
        if self.cluster is None:
            for _ in range(shards):
                self._new_shard()
        self._checks: dict[str, asyncio.Future[list[str | None]]] = {}
        self._backlogs: dict[tuple[str, str, str], asyncio.Future[list[Entry]]] = {}

    def start(self) -> None:
        self._started = True
        for shard in self.shards:
            shard.task = asyncio.ensure_future(shard.run())

    async def stop(self) -> None:
        tasks = [task for shard in self.shards for task in (shard.task, shard.waker) if task is not None]
        await cancel_and_wait(*tasks)
        for shard in self.shards:
            await shard.disconnect()
        for control in self._controls.values():
            await control.aclose()

    def _new_shard(self) -> _Shard:
        shard = _Shard(self._locate, self._control, self.settings.sse_read_block_ms)
        self.shards.append(shard)
        if self._started:
            shard.task = asyncio.ensure_future(shard.run())
        return shard

    def _control(self, url: str) -> Redis:
        control = self._controls.get(url)
        if control is None:
            pool = bounded_pool(url, 1, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
            control = self._controls[url] = Redis.from_pool(pack_with_hiredis(pool))
        return control

    async def _locate(self, key: str, failed: bool) -> str:
        if self.cluster is None:
            return self.settings.streams_url
        if failed:
            # The cluster client follows MOVED and re-reads the slot map after a failed node; one command on
            # the key brings its view of the slot's owner up to date.
            with contextlib.suppress(RedisError, OSError):
                await self.cluster.exists(key)
        node = self.cluster.get_node_from_key(key)
        return node_url(self.settings.streams_url, node.host, node.port)

    def _shard(self, keys: GenerationKeys) -> _Shard:
        """By bucket: a shard waits on the doorbells of its buckets (on a cluster, of its one bucket's slot)."""
        if self.cluster is None:
            return self.shards[keys.bucket % len(self.shards)]
        shard = self._by_bucket.get(keys.bucket)
        if shard is None:
            shard = self._by_bucket[keys.bucket] = self._new_shard()
        return shard

    async def follow(self, keys: GenerationKeys, after: str) -> AsyncIterator[list[Entry]]:
        """Batches of entries after `after`, then live ones, until the terminal event or the generation expires."""
        shard = self._shard(keys)
        subscriber = _Subscriber()
        followed = shard.followed.get(keys.events)
        moved = followed is None
        if followed is None:
            # The reader delivers everything after `after` itself: no backlog read needed.
            followed = shard.followed[keys.events] = _Followed(after)
        elif not followed.confirmed and _before(after, followed.last_id):
            # The position is only an earlier subscriber's claim: read from here instead (it drops what it
            # has not asked for); a backlog up to that claim could stop short of entries still to come.
            followed.last_id = after
            moved = True
        position = followed.last_id
        followed.subscribers.add(subscriber)
        try:
            if moved:
                shard.add(keys.events, keys.bell)
            last = after
            if _before(after, position):
                backlog = await self._backlog(keys.events, after, position)
                if backlog:
                    yield backlog
                    last = backlog[-1][0]
                    if is_terminal(backlog[-1][1]):
                        return
            async for batch in self._live(subscriber, keys, last):
                yield batch
                if is_terminal(batch[-1][1]):
                    return
        finally:
            followed.subscribers.discard(subscriber)
            if not followed.subscribers and shard.followed.get(keys.events) is followed:
                del shard.followed[keys.events]
                shard.fresh.pop(keys.events, None)

    async def _backlog(self, key: str, after: str, position: str) -> list[Entry]:
        """Entries after `after` up to `position` (which the reader has delivered, so they all exist).

        Clients joining one generation together share one read per range: 10,000 clients of 20 generations
        made 10,000 XRANGEs through the bounded pool, more than it served within its timeout, and streams broke
        after their headers. A read started for the same position already holds every entry up to it."""
        wanted = (key, after, position)
        read = self._backlogs.get(wanted)
        if read is None:
            read = self._backlogs[wanted] = asyncio.ensure_future(self.read_backlog(key, after))
            read.add_done_callback(lambda done: _forget(self._backlogs, wanted, done))
        entries = await asyncio.shield(read)
        return [entry for entry in entries if not _before(position, entry[0])]

    async def read_backlog(self, key: str, after: str) -> list[Entry]:
        """The stream after `after` (a seam the tests use to count reads)."""
        return await read_range(self.streams, key, after)

    async def _ended(self, key: str, last: str) -> bool:
        """Whether a quiet subscriber at `last` is done: the generation is gone, or its terminal event is at or
        before `last` (a subscriber resuming from past the end sees no entry at all, so not the terminal).

        One HMGET per key at a time, shared by all its subscribers: they all got the key's last batch at the
        same moment, so their idle timers end together (10,000 clients of 20 generations sent 10,000 checks at
        once, more than the bounded pool could serve in its timeout)."""
        check = self._checks.get(key)
        if check is None:
            check = self._checks[key] = asyncio.ensure_future(self.streams.hmget(key, ["status", "terminal_id"]))  # type: ignore[arg-type]
            check.add_done_callback(lambda done: _forget(self._checks, key, done))
        status, terminal_id = await asyncio.shield(check)
        return status is None or (terminal_id is not None and not _before(last, terminal_id))

    async def _live(self, subscriber: _Subscriber, keys: GenerationKeys, last: str) -> AsyncIterator[list[Entry]]:
        idle_s = self.settings.sse_read_block_ms / 1000
        while True:
            try:
                batch = await asyncio.wait_for(subscriber.queue.get(), idle_s)
            except TimeoutError:
                # Nothing for a while: stop following a generation that no longer exists. While Redis is
                # away that is unknown: keep the client (pings keep it open) and read on once it is back.
                with contextlib.suppress(RedisError, OSError):
                    if await self._ended(keys.state, last):
                        return
                continue
            # A batch is in id order: if its first entry is new, all are (the common case, one id parse per
            # batch); only around the hand-over from the backlog can a batch hold entries already sent.
            fresh = batch if _before(last, batch[0][0]) else [entry for entry in batch if _before(last, entry[0])]
            if not fresh:
                continue
            last = fresh[-1][0]
            for index, (_, raw) in enumerate(fresh):
                if is_terminal(raw):
                    yield fresh[: index + 1]
                    return
            yield fresh


def _forget(shared: dict[Any, Any], key: Any, done: asyncio.Future[Any]) -> None:
    """A shared read is over: the next caller starts a new one."""
    shared.pop(key, None)
    if not done.cancelled():
        done.exception()  # retrieved here: every awaiter may have gone (clients that disconnected)


def node_url(cluster_url: str, host: str, port: int) -> str:
    """A plain Redis URL of one cluster node, with the cluster URL's scheme, credentials and options."""
    parts = urlsplit(cluster_url.replace("+cluster", "", 1))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, "", parts.query, ""))


def reader_options(block_ms: int) -> dict[str, Any]:
    """Connection options of a blocking reader: a socket timeout above the BLOCK (a reply later than that will
    not come), a health check before a read after a long quiet spell, and TCP keep-alive."""
    block_s = block_ms / 1000
    return {
        "socket_timeout": block_s + max(2.0, block_s),
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _later(entry_id: str, position: str) -> bool:
    """Stream id entry_id > position, without parsing both in the common case (ids of the same era: their
    millisecond parts have as many digits, so they compare as text)."""
    entry_ms, _, entry_seq = entry_id.partition("-")
    position_ms, _, position_seq = position.partition("-")
    if len(entry_ms) != len(position_ms) or not entry_seq.isdigit() or not position_seq.isdigit():
        return _before(position, entry_id)
    if entry_ms != position_ms:
        return entry_ms > position_ms
    return int(entry_seq) > int(position_seq)


def _before(a: str, b: str) -> bool:
    """Stream id a < b."""
    pa, pb = parse_stream_id(a), parse_stream_id(b)
    return pa is not None and pb is not None and pa < pb
