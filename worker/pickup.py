"""Job start: arq's start_jobs with its WATCH / EXISTS / ZSCORE / MULTI (4 round trips) replaced by one script
that also sets the short lease, so the provider call starts sooner and a crash right after costs one lease.

arq builds its Worker itself from the settings class, so the seam is the method, patched at import of
worker.main (like the poll loop in worker/wakeup.py and worker/resilience.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from shared.ids import GENERATION_ID_RE
from shared.lua import TAKE_AND_CLAIM, TAKE_JOB
from shared.state import parse_claim
from worker.deps import Deps
from worker.lease import Leases
from worker.wakeup import bind_starter, woken_jobs

log = logging.getLogger("sse_relay.worker")
_StartJobs = Callable[[Worker, list[bytes]], Coroutine[Any, Any, None]]


async def start_jobs(self: Worker, job_ids: list[bytes]) -> None:
    """arq's start_jobs, same book-keeping (semaphore, job counter, tasks), one round trip per job."""
    leases: Leases | None = self.ctx.get("leases")
    if leases is None:  # not our worker settings: arq's own way
        await _ARQ_START_JOBS(self, job_ids)
        return
    # A lease that lapsed while Redis was away lets this very worker pick its own running job up again; arq
    # would then run a second copy and lose track of the first (its job_tasks is keyed by job id).
    running = {job_id for job_id, task in self.tasks.items() if not task.done()}
    for job_id_b in job_ids:
        job_id = job_id_b.decode()
        if job_id in running:
            continue
        await self.sem.acquire()
        if self.job_counter >= self.max_jobs:
            self.sem.release()
            return
        self.job_counter += 1
        try:
            score = await _take(self, job_id, leases)
        except ResponseError as exc:
            # Redis refused the write (out of memory, read-only replica): like arq, skip the job this round.
            log.warning("taking job %s failed: %s", job_id, type(exc).__name__)
            score = None
        except BaseException:
            self._release_sem_dec_counter_on_complete()  # Redis went away: give the slot back
            raise
        if not score:
            self._release_sem_dec_counter_on_complete()
            continue
        leases.add(job_id)
        task = self.loop.create_task(self.run_job(job_id, int(float(score))))
        task.add_done_callback(lambda _, job_id=job_id: _finished(self, leases, job_id))  # type: ignore[misc]
        self.tasks[job_id] = task


async def _take(worker: Worker, job_id: str, leases: Leases) -> Any:
    """-> the job's score if this worker took it, else None. A generation's job is also claimed in that round
    trip when queue and streams share a Redis; the claim waits in ctx["claims"] for run_generation."""
    in_progress = in_progress_key_prefix + job_id
    deps: Deps | None = worker.ctx.get("deps")
    if deps is None or not GENERATION_ID_RE.fullmatch(job_id) or deps.settings.streams_url != deps.settings.redis_url:
        keys = [in_progress, worker.queue_name]
        return await _script(worker, TAKE_JOB)(keys=keys, args=[job_id, timestamp_ms(), leases.lease_ms])
    state_keys = deps.generations.keys(job_id)
    keys = [state_keys.events, state_keys.state, in_progress, worker.queue_name]
    args: list[str | int] = [repr(time.time()), job_id, timestamp_ms(), leases.lease_ms]
    reply = await _script(worker, TAKE_AND_CLAIM)(keys=keys, args=args)
    if not reply:
        return None
    score, *claim = reply
    worker.ctx["claims"][job_id] = parse_claim(job_id, claim)
    return score


def _script(worker: Worker, source: str) -> AsyncScript:
    scripts: dict[str, AsyncScript] = worker.__dict__.setdefault("_sse_relay_scripts", {})
    if source not in scripts:
        scripts[source] = worker.pool.register_script(source)
    return scripts[source]


def _finished(worker: Worker, leases: Leases, job_id: str) -> None:
    leases.discard(job_id)
    worker.ctx.get("claims", {}).pop(job_id, None)  # arq did not run the function after all
    worker._release_sem_dec_counter_on_complete()


_ARQ_START_JOBS: _StartJobs = Worker.start_jobs
_PollIteration = Callable[[Worker], Coroutine[Any, Any, None]]


def _woken_first(poll_iteration: _PollIteration) -> _PollIteration:
    async def wrapper(self: Worker) -> None:
        if "_sse_relay_bound" not in self.__dict__:
            self.__dict__["_sse_relay_bound"] = True
            bind_starter(lambda job_id: _start_woken(self, job_id))
        # The jobs a wake-up named start before arq looks through the queue: one round trip fewer.
        job_ids = woken_jobs()
        if job_ids and self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self.start_jobs(job_ids)
        await poll_iteration(self)

    return wrapper


async def _start_woken(worker: Worker, job_id: bytes) -> bool:
    """The wake-up listener starts its job itself, not after a hop through arq's poll loop."""
    if not worker.allow_pick_jobs or worker.job_counter >= worker.max_jobs:
        return False
    await worker.start_jobs([job_id])
    return True


def install() -> None:
    """Before worker.resilience.install(), which wraps the poll iteration this wraps."""
    Worker.start_jobs = start_jobs  # type: ignore[method-assign]
    Worker._poll_iteration = _woken_first(Worker._poll_iteration)  # type: ignore[method-assign,assignment]
