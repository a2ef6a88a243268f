"""Job take (used by worker/relay.py's start_jobs): arq's WATCH / EXISTS / ZSCORE / MULTI (4 round trips) replaced
by one script that also sets the short lease, so the provider call starts sooner and a crash right after costs
one lease. A generation's job is claimed in the same round trip when queue and streams share a Redis."""

from __future__ import annotations

import time
from typing import Any

from arq.connections import ArqRedis
from arq.utils import timestamp_ms

from shared.ids import GENERATION_ID_RE
from shared.jobs import in_progress_key
from shared.lua import TAKE_AND_CLAIM, TAKE_JOB
from shared.state import Claim, parse_claim
from worker.deps import Deps


class Taker:
    """One worker's take of its jobs; a claim made with a take waits in `claims` for run_generation."""

    def __init__(self, queue: ArqRedis, queue_name: str, deps: Deps, claims: dict[str, Claim]) -> None:
        self.queue_name = queue_name
        self.deps = deps
        self.claims = claims
        self._take = queue.register_script(TAKE_JOB)
        self._take_and_claim = queue.register_script(TAKE_AND_CLAIM)
        settings = deps.settings
        self._claim_here = settings.streams_url == settings.redis_url

    async def take(self, job_id: str) -> Any:
        """-> the job's score if this worker took it, else None (it runs elsewhere, ended, or is deferred)."""
        lease_ms = self.deps.leases.lease_ms
        if not (self._claim_here and GENERATION_ID_RE.fullmatch(job_id)):
            keys = [in_progress_key(job_id), self.queue_name]
            return await self._take(keys=keys, args=[job_id, timestamp_ms(), lease_ms])
        state_keys = self.deps.generations.keys(job_id)
        keys = [state_keys.events, state_keys.state, in_progress_key(job_id), self.queue_name]
        reply = await self._take_and_claim(keys=keys, args=[repr(time.time()), job_id, timestamp_ms(), lease_ms])
        if not reply:
            return None
        score, *claim = reply
        claimed = self.claims[job_id] = parse_claim(job_id, claim)
        state = claimed.state
        if state is not None and not state.cancel_requested and claimed.attempt <= self.deps.settings.job_max_tries:
            # What worker/job.py's _run will stream: its request goes out now (worker/early.py).
            self.deps.early.start(job_id, self.deps.client, state.request)
        return score
