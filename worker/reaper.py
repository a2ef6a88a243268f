"""The reaper (a worker cron job, every minute): ends generations whose arq job is gone, so none stays `running`.

A job is gone when arq deleted it (its tries ran out while Redis refused writes, or arq's own timeout fired)
or it expired in the queue. Such a generation would hold its caller's slot and keep its clients waiting until
LIVE_TTL_S. Candidates are the callers' unfinished generations (the `active` sets the admission keeps); a
generation is reaped only when no arq job key and no lease exist for it, it is older than the grace (by its
state's TTL: Redis's clock, not this process's) and no worker claimed it since the reaper looked. The same pass
writes a missing record of a generation that ended without one (a store outage when the API cancelled it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.errors import ErrorCode, error_code_of
from shared.jobs import in_progress_key, job_key
from shared.keys import active_key
from shared.state import GenerationState
from shared.store.repository import FinalResult
from shared.webhooks import endpoints
from worker import metrics
from worker.deps import Deps

log = logging.getLogger("sse_relay.worker")

# Queue and streams on different servers: the API writes the state a moment before it enqueues the job.
GRACE_S = 60.0


@dataclass(slots=True)
class Reaped:
    ended: int = 0
    recorded: int = 0


async def reap(deps: Deps, queue: Redis, grace_s: float = GRACE_S) -> Reaped:
    """One pass over every caller's unfinished generations."""
    redis = deps.generations.redis
    pattern = _glob_escape(active_key(deps.settings.key_prefix, "")) + "*"
    reaped = Reaped()
    async for key in redis.scan_iter(match=pattern, count=1000):
        for generation_id in await redis.zrange(key, 0, -1):
            await _check(deps, queue, str(key), str(generation_id), grace_s, reaped)
    return reaped


async def _check(deps: Deps, queue: Redis, active: str, generation_id: str, grace_s: float, reaped: Reaped) -> None:
    generations = deps.generations
    status, terminal_id, attempt = await generations.progress(generation_id)
    if status is None:
        await generations.redis.zrem(active, generation_id)  # expired: nothing left to end
        return
    if terminal_id is None:
        if await _job_exists(queue, generation_id):
            return
        outcome, terminal_id = await generations.reap(generation_id, attempt, grace_s)
        if outcome != "ended":
            return
        log.warning("generation %s: its job is gone; ended worker_lost", generation_id)
        metrics.FINISHED.labels("error", ErrorCode.WORKER_LOST.value).inc()
        reaped.ended += 1
    state = await generations.get(generation_id)
    if state is None or state.terminal_id != terminal_id:
        return
    if await _ensure_record(deps, state):
        reaped.recorded += 1
    await generations.release(state.owner, generation_id)


async def _job_exists(queue: Redis, generation_id: str) -> bool:
    # The arq job id is the generation id (api/enqueue.py). A running job's lease is its in-progress key.
    return bool(await queue.exists(job_key(generation_id), in_progress_key(generation_id)))


async def _ensure_record(deps: Deps, state: GenerationState) -> bool:
    """Writes the record of an ended generation that has none (a worker always writes its own first)."""
    if state.terminal_id is None or state.status not in ("error", "cancelled"):
        return False
    if await deps.store.get(state.id) is not None:
        return False
    code = error_code_of(state.error_code)
    record = FinalResult.ending(state, state.status, state.terminal_id, state.attempt, code=code)
    saved = await deps.store.save(record, endpoints(deps.settings))
    deps.webhooks_written()
    return saved


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
