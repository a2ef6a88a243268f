"""`delivery`'s stand-in for the worker: `python -m bench.producer STREAMS EVENTS SIZE DELAY_MS PER_CALL`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from redis.asyncio import Redis

from shared import events, lua
from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.redis_client import streams_client
from shared.state import Generations, Status

# Script calls per pipeline: big enough to amortise the round trip, small enough that the first streams of a
# tick are not held back behind the encoding of the last ones.
_PIPELINE_CALLS = 250


async def create(settings: Settings, n: int) -> list[str]:
    """n generations created and claimed (attempt 1, running) with the service's own code, as the API (for the
    anonymous caller, when auth is off) and the worker would."""
    client = streams_client(settings, max_connections=8)
    generations = Generations(client, settings)
    request = StoredRequest(messages=[{"role": "user", "content": "bench"}], model="demo")
    ids = [new_generation_id() for _ in range(n)]

    async def one(generation_id: str) -> None:
        await generations.create(generation_id, request, {}, "anonymous")
        if (await generations.claim(generation_id)).outcome != "ok":
            raise RuntimeError(f"claim of {generation_id} failed")

    try:
        for start in range(0, n, 100):
            await asyncio.gather(*(one(i) for i in ids[start : start + 100]))
    finally:
        await client.aclose()
    return ids


async def produce(
    settings: Settings, ids: list[str], count: int, size: int, delay_ms: int, per_call: int
) -> dict[str, Any]:
    """`count` content events of `size` chars per generation, then `done`: one PUBLISH call per generation
    per tick carrying `per_call` events (a tick every `delay_ms`, or back to back when 0)."""
    # One connection: pipelines go out in order, and the producer's cost stays one socket's.
    redis = Redis.from_url(settings.streams_url, decode_responses=True, single_connection_client=True)
    generations = Generations(redis, settings)
    calls: list[list[Any]] = []

    async def collect(keys: list[str], args: list[Any]) -> list[Any]:
        """Stands in for the PUBLISH script call: the service's own `publish` builds its exact ARGV."""
        calls.append(args)
        return [1, "", ""]  # "written": the real reply is read from the pipeline

    generations._publish = collect  # type: ignore[assignment]
    piece = ("abcdefgh" * (size // 8 + 1))[:size]
    content, done = events.content(piece), events.done(piece * count, "stop", None)
    sent = ticks = refused = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        sha = await redis.script_load(lua.PUBLISH)
        while sent < count:
            await asyncio.sleep(max(0.0, started + ticks * delay_ms / 1000 - time.perf_counter()))
            batch = min(per_call, count - sent)
            last = sent + batch >= count
            # The service's publish builds this tick's ARGV once (sequence-numbered, as the worker's publisher
            # writes); every generation's call differs only in keys.
            status: Status | None = "done" if last else None
            payloads = [content] * batch + ([done] if last else [])
            fields = {"finish_reason": "stop"} if last else None
            await generations.publish(ids[0], 1, payloads, status, fields, first=sent == 0, seq=ticks + 1)
            args = calls[-1]
            for start in range(0, len(ids), _PIPELINE_CALLS):
                async with redis.pipeline(transaction=False) as pipe:
                    for generation_id in ids[start : start + _PIPELINE_CALLS]:
                        keys = generations.keys(generation_id)
                        pipe.evalsha(sha, 3, keys.events, keys.state, keys.bell, *args)
                    refused += sum(1 for result in await pipe.execute() if int(result[0]) != 1)
            sent += batch
            ticks += 1
    finally:
        await redis.aclose()
    elapsed = time.perf_counter() - started
    return {"cpu_s": time.process_time() - cpu_started, "seconds": elapsed, "ticks": ticks, "refused": refused}


def main() -> int:
    streams, count, size, delay_ms, per_call = map(int, sys.argv[1:6])
    settings = Settings()  # the stack's environment: Redis URL, key prefix, TTLs
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ids = runner.run(create(settings, streams))
        # Told when to go: interpreter start-up, imports and the set-up stay out of the measured window.
        print(json.dumps(ids), flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        print(json.dumps(runner.run(produce(settings, ids, count, size, delay_ms, per_call))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
