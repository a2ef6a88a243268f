"""Reading a generation's Redis stream: ranges, blocking reads, and folding events back into text."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.events import TERMINAL_TYPES
from shared.redis_client import StreamsRedis
from shared.retry import until_redis_answers

Entry = tuple[str, str]  # (stream entry id, event JSON)

# Events are encoded with "type" first (shared.events.encode), so the terminal check needs no JSON parse.
_TERMINAL_PREFIXES = tuple(f'{{"type":"{kind}"' for kind in sorted(TERMINAL_TYPES))


def is_terminal(raw: str) -> bool:
    return raw.startswith(_TERMINAL_PREFIXES)


def _entries(raw: list[tuple[str, dict[str, str]]]) -> list[Entry]:
    return [(entry_id, fields["e"]) for entry_id, fields in raw]


async def read_range(redis: StreamsRedis, key: str, after: str = "-", count: int | None = None) -> list[Entry]:
    """Entries strictly after `after` ("-" for all)."""
    start = after if after == "-" else f"({after}"
    return _entries(await redis.xrange(key, min=start, max="+", count=count))


async def first_entry_id(redis: StreamsRedis, key: str) -> str | None:
    head = await redis.xrange(key, min="-", max="+", count=1)
    return str(head[0][0]) if head else None


async def follow(
    redis: StreamsRedis, key: str, state_key: str, after: str, block_ms: int
) -> AsyncIterator[list[Entry]]:
    """Batches of entries after `after`, then live ones, until the terminal event or the generation expires.

    The stream key itself does not exist until the first event, so liveness is the state hash's.
    """
    last = after
    while True:
        # While Redis is away the client waits (its pings go on) and reads on from `last` once it is back.
        read = functools.partial(redis.xread, {key: last}, count=1000, block=block_ms)
        response = await until_redis_answers(read, key)
        if not response:
            if not await until_redis_answers(lambda: redis.exists(state_key), key):
                return
            continue
        batch = _entries(response[0][1])
        for index, (_, raw) in enumerate(batch):
            if is_terminal(raw):
                yield batch[: index + 1]
                return
        last = batch[-1][0]
        yield batch


@dataclass(slots=True)
class Folded:
    """What a client that applied every event would show: text and reasoning after the last reset."""

    text: str = ""
    reasoning: str = ""
    terminal: dict[str, object] | None = None


def fold(entries: list[Entry]) -> Folded:
    text: list[str] = []
    reasoning: list[str] = []
    terminal: dict[str, object] | None = None
    for _, raw in entries:
        event = json.loads(raw)
        kind = event["type"]
        if kind == "content":
            text.append(event["data"])
        elif kind == "reasoning":
            reasoning.append(event["data"])
        elif kind == "reset":
            text.clear()
            reasoning.clear()
        else:
            terminal = event
    return Folded("".join(text), "".join(reasoning), terminal)
