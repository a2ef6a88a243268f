"""Creating a generation and enqueueing its arq job: one round trip when queue and streams share a Redis."""

from __future__ import annotations

import time
from typing import Any

from arq.connections import ArqRedis

from shared import lua, tracing
from shared.jobs import JOB_FUNCTION, StoredRequest, job_key, result_key, serialized_job
from shared.keys import wake_key
from shared.state import Generations

# The wake list never needs more entries than workers that could usefully wake at once.
_WAKE_MAX = 64


class Enqueuer:
    """The producer side of the queue; the job's layout is arq's own (shared/jobs.py)."""

    def __init__(self, generations: Generations, queue: ArqRedis, same_server: bool) -> None:
        self.generations = generations
        self.queue = queue
        self.same_server = same_server
        self._combined = queue.register_script(lua.CREATE_AND_ENQUEUE)
        self._wake = queue.register_script(lua.WAKE)

    async def submit(
        self,
        generation_id: str,
        request: StoredRequest,
        metadata: dict[str, Any],
        owner: str,
        read_token_sha: str = "",
    ) -> bool:
        """-> False, and nothing written, if the caller is at its limit of unfinished generations."""
        settings = self.generations.settings
        now_ms = int(time.time() * 1000)
        # The trace context (W3C traceparent) rides in the job, so the worker's spans join the request's trace.
        trace = tracing.carrier()
        job_kwargs: dict[str, Any] = {"trace": trace} if trace else {}
        job = serialized_job(generation_id, now_ms, job_kwargs)
        if not self.same_server:
            if not await self.generations.admit(owner, generation_id):
                return False
            await self.generations.create(generation_id, request, metadata, owner, read_token_sha)
            await self.queue.enqueue_job(JOB_FUNCTION, generation_id, _job_id=generation_id, **job_kwargs)
            await self._wake(keys=[wake_key(settings.key_prefix)], args=[_WAKE_MAX, generation_id])
            return True
        fields = self.generations.state_fields(request, metadata, owner, read_token_sha)
        keys = [
            self.generations.keys(generation_id).state,
            job_key(generation_id),
            result_key(generation_id),
            settings.queue_name,
            wake_key(settings.key_prefix),
        ]
        active, admission = self.generations.admission(owner)
        keys.append(active)
        args: list[Any] = [settings.live_ttl_s, self.queue.expires_extra_ms, job, now_ms, generation_id, _WAKE_MAX]
        args += admission
        for name, value in fields.items():
            args += [name, value]
        return int(await self._combined(keys=keys, args=args)) != -1

    async def ensure_job(self, generation_id: str) -> None:
        """Enqueue a queued generation's job again, a no-op while arq holds it (same job id).

        With queue and streams apart, creating takes separate writes: a request whose enqueue failed after the
        state was written leaves a generation without a job, which its idempotent retry would attach to and
        wait on until the reaper ended it `worker_lost`. On one server the state and the job are one script.
        """
        if self.same_server:
            return
        await self.queue.enqueue_job(JOB_FUNCTION, generation_id, _job_id=generation_id)
        await self._wake(keys=[wake_key(self.generations.settings.key_prefix)], args=[_WAKE_MAX, generation_id])
