"""Job pick-up without the polling delay: workers block on a wake list, arq's polling stays as the fallback.

arq polls its queue every `poll_delay` (0.5 s): a job waits 250 ms on average before it starts. The API pushes
to a wake list after each enqueue; one idle worker's BLPOP returns at once and ends its poll sleep early.
A lost wake-up costs one poll interval, never a job. arq builds its Worker itself from the settings class, so
the seam is its `poll` generator, replaced by one whose sleep an event can cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import arq.worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("sse_relay.worker")


@dataclass
class _Wake:
    """One event loop's wake-ups: the event that ends arq's poll sleep, and the job ids handed to this worker."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    job_ids: list[bytes] = field(default_factory=list)
    # Set by worker/pickup.py once arq's Worker runs: starts a job at once, False if it has no room now.
    starter: Callable[[bytes], Awaitable[bool]] | None = None


_wakes: dict[asyncio.AbstractEventLoop, _Wake] = {}


def _wake() -> _Wake:
    loop = asyncio.get_running_loop()
    if loop not in _wakes:
        _wakes[loop] = _Wake()
    return _wakes[loop]


def bind_starter(starter: Callable[[bytes], Awaitable[bool]]) -> None:
    _wake().starter = starter


def woken_jobs() -> list[bytes]:
    """The job ids wake-ups handed to this worker since the last call (worker/pickup.py starts them first)."""
    wake = _wake()
    job_ids, wake.job_ids = wake.job_ids, []
    return job_ids


async def wakeable_poll(step: float = 0.5) -> AsyncGenerator[float, None]:
    """arq.utils.poll, except that a wake-up ends the sleep early."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    event = _wake().event
    while True:
        before = loop.time()
        # Cleared before the iteration, not after: a wake-up that arrives during it ends the next sleep.
        event.clear()
        yield before - start
        remaining = step - (loop.time() - before)
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)


def install() -> None:
    arq.worker.poll = wakeable_poll  # type: ignore[attr-defined]


async def listen(redis: Redis, key: str, block_s: int = 5) -> None:
    """Runs for the worker's lifetime on its own connection (BLPOP holds it). Each entry is a job id: this
    worker starts that job without looking through the queue first."""
    wake = _wake()
    while True:
        try:
            popped = await redis.blpop([key], timeout=block_s)  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("wake-up listener: %s; retrying", type(exc).__name__)
            await asyncio.sleep(1.0)
            continue
        if popped and not await _start(wake, popped[1]):
            # No room (or not started yet): arq's next poll iteration starts it first.
            wake.job_ids.append(popped[1])
            wake.event.set()


async def _start(wake: _Wake, job_id: bytes) -> bool:
    """Start the job from here, without waiting for arq's poll loop to come round."""
    if wake.starter is None:
        return False
    try:
        return await wake.starter(job_id)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # Redis away: the poll loop has it as a fallback
        log.warning("starting woken job: %s", type(exc).__name__)
        return False
