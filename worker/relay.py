"""The worker process's arq Worker (`sse-relay worker`): arq's own, extended through overridden methods.

- `start_jobs`: one round trip per job, which also sets the job's short lease and sends its provider request
  (worker/pickup.py, worker/early.py), and never a second copy of a job this worker still runs.
- `_poll_iteration`: a Redis error ends the iteration, not the process (worker/resilience.py); the first one,
  right after on_startup, starts the wake-up listener (worker/wakeup.py).
- `close`: stops the listener before arq's own shutdown.
Plain `arq worker.main.WorkerSettings` runs the same jobs with arq's Worker: correct, only slower to start
them (it polls) and slower to retry a crashed worker's job (arq's long in-progress key).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from arq.worker import Worker
from redis.exceptions import ResponseError

from shared.state import Claim
from shared.tasks import cancel_and_wait
from worker.deps import Deps
from worker.pickup import Taker
from worker.resilience import POLL_ERRORS, Outage
from worker.wakeup import WakeList

log = logging.getLogger("sse_relay.worker")


class RelayWorker(Worker):
    """arq's Worker with fast pick-up, a pick-up guard and a poll loop that outlives Redis errors."""

    def __init__(self, *, wake_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wake_key = wake_key
        # Claims made with a take (worker/pickup.py), read by run_generation: arq copies ctx for each job.
        self.claims: dict[str, Claim] = self.ctx.setdefault("claims", {})
        self._outage = Outage()
        self._taker: Taker | None = None
        self._listener: asyncio.Task[None] | None = None
        self._room = asyncio.Event()

    async def _poll_iteration(self) -> None:
        if self._listener is None:
            self._listener = self.loop.create_task(self._listen(WakeList(self.pool, self.wake_key)))
        try:
            await super()._poll_iteration()
        except POLL_ERRORS as exc:
            # Also a finished job's book-keeping (arq re-raises run_job's errors here): the job stays queued,
            # and its next run finds the generation ended and only finishes the book-keeping.
            await self._outage.failed(exc)
        else:
            self._outage.answered()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, same book-keeping (semaphore, job counter, tasks), one round trip per job."""
        for job_id in (raw.decode() for raw in job_ids):
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            try:
                score = await self._take(job_id)
            except BaseException:
                self._give_back_slot()  # Redis went away
                raise
            if not score:
                self._give_back_slot()
                continue
            self._deps.leases.add(job_id)
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(partial(self._finished, job_id))
            self.tasks[job_id] = task

    async def close(self) -> None:
        if self._listener is not None:
            await cancel_and_wait(self._listener)
            self._listener = None
        self._taker = None  # its scripts are registered on the pool arq closes now
        try:
            await super().close()
        except POLL_ERRORS as exc:
            # Redis went first (Ctrl-C reaches `sse-relay dev`'s embedded Redis too): arq's close stopped at
            # deleting the health key, which expires by itself; the rest of its close must still run.
            if self._pool is None:
                raise
            log.warning("shutdown: Redis unreachable (%s); the health key will expire", type(exc).__name__)
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
            await self.pool.close(close_connection_pool=True)
            self._pool = None

    @property
    def _deps(self) -> Deps:
        deps: Deps = self.ctx["deps"]  # made by on_startup, before the first poll iteration
        return deps

    async def _take(self, job_id: str) -> Any:
        """-> the job's score if this worker took it, else None."""
        # A lease that lapsed while Redis was away lets this very worker take its own running job again; arq
        # would then run a second copy and lose track of the first (its job_tasks is keyed by job id).
        running = self.tasks.get(job_id)
        if running is not None and not running.done():
            return None
        if self._taker is None:
            self._taker = Taker(self.pool, self.queue_name, self._deps, self.claims)
        try:
            return await self._taker.take(job_id)
        except ResponseError as exc:
            # Redis refused the write (out of memory, read-only replica): like arq, skip the job this round.
            log.warning("taking job %s failed: %s", job_id, type(exc).__name__)
            return None

    def _finished(self, job_id: str, task: object) -> None:
        if self.tasks.get(job_id, task) is task:  # not taken again since (that run's lease and claim stay)
            self._deps.leases.discard(job_id)
            self.claims.pop(job_id, None)  # arq did not run the function after all
            self._deps.early.discard(job_id)  # or it ended before streaming its request
        self._give_back_slot()

    def _give_back_slot(self) -> None:
        # A listener that found the worker full sleeps until a slot comes back, whichever way it does.
        self._release_sem_dec_counter_on_complete()
        self._room.set()

    async def _listen(self, wakes: WakeList) -> None:
        """Runs while the worker picks up jobs; it only listens with room, so a full worker leaves the
        wake-ups to the others."""
        while self.allow_pick_jobs:
            if self.job_counter >= self.max_jobs:
                self._room.clear()
                await self._room.wait()
                continue
            job_id = await wakes.next()
            if job_id is None:
                continue
            if not self.allow_pick_jobs:  # shutting down since the BLPOP began
                await wakes.give_back(job_id)
                return
            try:
                await self.start_jobs([job_id])
            except Exception as exc:  # Redis away: the job stays queued, and the poll loop has it
                log.warning("starting woken job: %s", type(exc).__name__)
