"""worker.completion.finish against a real Redis: an attempt that went stale while it waited ends quietly."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

from redis.asyncio import Redis

from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.state import Generations
from shared.streams import read_range
from worker.completion import Ending, finish
from worker.deps import Deps
from worker.publisher import Publisher

REQUEST = StoredRequest(messages=[{"role": "user", "content": "hi"}], model="demo-model")


async def test_a_stale_attempt_finishing_writes_nothing_and_says_stale(redis: Redis) -> None:
    settings = Settings(key_prefix="u" + uuid.uuid4().hex[:8], finished_ttl_s=60)
    generations = Generations(redis, settings)
    generation_id = new_generation_id()
    await generations.create(generation_id, REQUEST, {}, "anonymous")
    first = await generations.claim(generation_id)
    assert first.state is not None
    publisher = Publisher(generations, generation_id, first.attempt, 60.0)
    publisher.add("content", "a")  # written at once
    while not await redis.xlen(generations.keys(generation_id).events):
        await asyncio.sleep(0.01)
    publisher.add("content", "b")  # pending: the minimum interval is long
    # Meanwhile (Redis was away longer than the lease) another worker took the generation over.
    assert (await generations.claim(generation_id)).attempt == first.attempt + 1

    # Nothing else of Deps is reached on this path: the refusal comes before the store and the release.
    deps = cast(Deps, cast(Any, type("D", (), {"generations": generations, "settings": settings})()))
    outcome = await finish(deps, first.state, first.attempt, publisher, "ab", "", Ending("done", finish_reason="stop"))

    assert outcome == "stale"
    entries = await read_range(redis, generations.keys(generation_id).events)
    assert [json.loads(raw)["data"] for _, raw in entries] == ["a"]
