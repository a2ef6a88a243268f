"""Write-behind: a background write still awaiting its reply when the attempt ends is never sent twice (real Redis)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from redis.asyncio import Redis

from shared import events
from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.state import Generations, PublishResult
from shared.streams import fold, read_range
from worker.publisher import Publisher


class SlowReplyGenerations(Generations):
    """The second write is applied by Redis at once, but its reply arrives late (a slow network)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.applied_second = asyncio.Event()
        self.calls = 0

    async def publish(
        self, generation_id: str, attempt: int, payloads: list[str], *args: Any, **kwargs: Any
    ) -> PublishResult:
        self.calls += 1
        call = self.calls
        result = await super().publish(generation_id, attempt, payloads, *args, **kwargs)
        if call == 2:
            self.applied_second.set()
            await asyncio.sleep(0.2)
        return result


async def test_ending_while_a_background_write_awaits_its_reply_does_not_duplicate_it(redis: Redis) -> None:
    settings = Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60)
    generations = SlowReplyGenerations(redis, settings)
    generation_id = new_generation_id()
    request = StoredRequest(messages=[{"role": "user", "content": "hi"}], model="fake")
    await generations.create(generation_id, request, {}, "anonymous")
    claim = await generations.claim(generation_id)
    publisher = Publisher(generations, generation_id, claim.attempt)

    publisher.add("content", "a")
    while not await redis.xlen(generations.keys(generation_id).events):  # "a" is written on its own
        await asyncio.sleep(0.01)
    publisher.add("content", "b")
    await asyncio.wait_for(generations.applied_second.wait(), 5)  # the attempt ends while that reply is due
    publisher.close()
    await publisher.settle()
    result = await publisher.finish(events.done("ab", "stop", None), "done", {}, None)

    assert result.outcome == "written"
    entries = await read_range(redis, generations.keys(generation_id).events)
    folded = fold(entries)
    assert folded.terminal is not None and folded.terminal["type"] == "done"
    assert json.loads(entries[-1][1])["data"]["length"] == 2
    # The stream's text must be what the done event describes: every piece exactly once.
    assert folded.text == "ab"
