"""The running jobs' leases: arq's in-progress keys cut to JOB_LEASE_S at job start, renewed by one task per worker.

arq keeps that key for the job timeout + 10 s, so a SIGKILLed worker's job would wait that long before another
worker retries it. With a short renewed lease, another worker takes over seconds after a crash. One renewal
task per process, one pipelined round trip for all its jobs: a loop busy with thousands of streams renews as
cheaply as an idle one.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from shared.jobs import in_progress_key
from shared.tasks import cancel_and_wait

log = logging.getLogger("sse_relay.worker")


class Leases:
    """The leases of the jobs this process runs."""

    def __init__(self, redis: Redis, lease_s: float) -> None:
        self._redis = redis
        self._lease_ms = int(lease_s * 1000)
        self._interval_s = lease_s / 3
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._renew_forever())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    @property
    def lease_ms(self) -> int:
        return self._lease_ms

    def count(self) -> int:
        """The jobs this process runs now (read by the metrics thread: len() of a set is atomic)."""
        return len(self._held)

    def add(self, job_id: str) -> None:
        """From the job's take (worker/pickup.py sets the first lease) until arq is about to finish it."""
        self._held.add(job_id)

    def discard(self, job_id: str) -> None:
        self._held.discard(job_id)

    async def _renew_forever(self) -> None:
        failing = False  # log an outage once, not every renewal
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._held:
                continue
            try:
                await self._renew(list(self._held))
            except Exception as exc:  # keep trying: a dead renewal task would let every later job's lease lapse
                if not failing:
                    log.warning("lease renewal for %d jobs failed: %s; retrying", len(self._held), type(exc).__name__)
                failing = True
            else:
                failing = False

    async def _renew(self, job_ids: list[str]) -> None:
        # SET, not PEXPIRE: a lease that lapsed while Redis was away comes back, so the job's queue entry
        # stays covered and no second copy starts while this one is alive.
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.set(in_progress_key(job_id), b"1", px=self._lease_ms)
            await pipe.execute()
