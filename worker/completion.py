"""Ending a generation: durable record (with its webhook deliveries) first, then the terminal event (same id),
then `on_complete`."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import events
from shared.errors import ErrorCode
from shared.hooks import GenerationInfo, UnknownHook
from shared.retry import until_redis_answers
from shared.state import GenerationState, PublishResult, Status
from shared.store.repository import FinalResult, aware
from shared.webhooks import endpoints
from worker import metrics
from worker.deps import Deps
from worker.publisher import Publisher, PublishRefused
from worker.webhooks import UNPUBLISHED_GRACE_S

log = logging.getLogger("sse_relay.worker")
_SAVE_FIRST_DELAY_S = 0.2
_SAVE_MAX_DELAY_S = 5.0
# Beyond a hook's timeout: its worker's store write of the outcome, and clocks that differ a little.
_HOOK_MARGIN_S = 2.0


@dataclass(slots=True)
class Ending:
    """How an attempt ends: status, and for errors the code."""

    status: Status
    code: ErrorCode | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


async def finish(
    deps: Deps, state: GenerationState, attempt: int, publisher: Publisher, text: str, reasoning: str, end: Ending
) -> str:
    """-> the attempt's outcome ('done', 'error', 'cancelled', or why the terminal event was refused)."""
    try:
        await publisher.settle()
    except PublishRefused as refused:
        # Stale (a newer attempt took over while this one waited for Redis) or already ended: the caller
        # decides what that means for the arq job; this attempt writes nothing more.
        return refused.result.outcome
    terminal_id = await until_redis_answers(lambda: deps.generations.next_terminal_id(state.id), "choosing an id")
    result = FinalResult.ending(
        state,
        end.status,
        terminal_id,
        attempt,
        finished_at=datetime.now(UTC),
        text=text,
        reasoning=reasoning,
        finish_reason=end.finish_reason,
        usage=end.usage,
        code=end.code,
    )
    await _save(deps, result)
    published = await _publish_terminal(publisher, result, text, end)
    if published.outcome != "written":
        return published.outcome
    metrics.FINISHED.labels(end.status, end.code.value if end.code else "none").inc()
    deps.webhooks_published(state.id)  # sent only now: before the terminal event the ending was not final
    await until_redis_answers(lambda: deps.generations.release(state.owner, state.id), f"releasing {state.id}")
    if end.status == "done" and state.request.on_complete:
        await run_on_complete(deps, state.id)
    return end.status


async def _save(deps: Deps, result: FinalResult) -> None:
    """Until the record is written: a terminal event never goes out without it (after FINISHED_TTL_S the record
    is all there is, and on_complete runs from it). Meanwhile the job holds its lease, so no other attempt
    starts; the job's own deadline (worker/job.py) ends the wait and leaves the job queued for another try."""
    delay = _SAVE_FIRST_DELAY_S
    tries = 0
    while True:
        tries += 1
        try:
            await deps.store.save(result, endpoints(deps.settings), UNPUBLISHED_GRACE_S)
        except Exception as exc:
            log.warning(
                "saving %s failed (try %d): %s; the terminal event waits, retrying in %.1f s",
                result.id, tries, type(exc).__name__, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, _SAVE_MAX_DELAY_S)
            continue
        if tries > 1:
            log.info("saved %s after %d tries", result.id, tries)
        return


async def _publish_terminal(publisher: Publisher, result: FinalResult, text: str, end: Ending) -> PublishResult:
    if end.status == "done":
        # Hashed once: a long answer's sha256 is the one costly step of the ending.
        length, sha256 = text_digest = events.digest(text)
        payload = events.done_of(text_digest, end.finish_reason, end.usage)
        fields = {
            "finish_reason": end.finish_reason or "",
            "usage": json.dumps(end.usage) if end.usage else "",
            "length": str(length),
            "sha256": sha256,
        }
    else:
        assert end.code is not None
        payload = events.error(end.code)
        fields = {"error_code": end.code.value}
    return await publisher.finish(payload, end.status, fields, result.terminal_event_id)


async def _until_abandoned(deps: Deps, generation_id: str, lease: timedelta) -> None:
    """Waits (holding this job's lease) until a `running` hook claim is older than `lease`, if there is one."""
    record = await deps.store.get(generation_id)
    started = aware(record.hook_started_at) if record is not None and record.hook_status == "running" else None
    if started is not None:
        wait = (started + lease - datetime.now(UTC)).total_seconds() + 0.1
        if wait > 0:
            log.info("on_complete for %s: waiting %.1f s for the earlier worker's claim to lapse", generation_id, wait)
            await asyncio.sleep(wait)


async def run_on_complete(deps: Deps, generation_id: str, after_lapse: bool = False) -> None:
    """Runs the hook if it still has to run: exactly once per `done` generation, whichever attempt gets here.

    The claim in the store makes concurrent or repeated calls safe; a worker that dies mid-hook leaves a
    `running` claim that another worker may take over after 2 x HOOK_TIMEOUT_S (the sweep), or, `after_lapse`
    (this job ran again because the earlier try's lease lapsed), as soon as that hook's own timeout is surely
    over: a live worker's hook has ended by then, so it does not run twice (a synchronous hook still running
    in its thread past its timeout is the exception; hooks get the generation id to be idempotent).
    """
    settings = deps.settings
    lease = timedelta(seconds=settings.hook_timeout_s * 2)
    if after_lapse:
        lease = timedelta(seconds=settings.hook_timeout_s + _HOOK_MARGIN_S)
        await _until_abandoned(deps, generation_id, lease)
    for _ in range(settings.hook_max_attempts):
        claimed = await deps.store.claim_hook(generation_id, settings.hook_max_attempts, lease)
        if claimed is None:
            return
        record = await deps.store.get(generation_id)
        if record is None or record.hook_name is None:
            return
        try:
            fn = deps.hooks.resolve(record.hook_name)
            info = GenerationInfo(
                id=record.id,
                model=record.model,
                status=record.status,
                text=record.text,
                reasoning=record.reasoning,
                finish_reason=record.finish_reason,
                usage=record.usage,
                metadata=record.meta,
                created_at=aware(record.created_at) or datetime.now(UTC),
                finished_at=aware(record.finished_at) or datetime.now(UTC),
                attempt=record.attempts,
            )
            await asyncio.wait_for(deps.hook_threads.call(fn, record.text, info), settings.hook_timeout_s)
        except Exception as exc:
            metrics.HOOK_CALLS.labels("on_complete", "timeout" if isinstance(exc, TimeoutError) else "error").inc()
            reason = "unknown hook" if isinstance(exc, UnknownHook) else type(exc).__name__
            log.warning(
                "on_complete %s for %s failed (attempt %d): %s", record.hook_name, generation_id, claimed, reason
            )
            await deps.store.finish_hook(generation_id, ok=False, error=reason)
            await asyncio.sleep(min(2.0**claimed * 0.25, 5.0))
            continue
        metrics.HOOK_CALLS.labels("on_complete", "ok").inc()
        await deps.store.finish_hook(generation_id, ok=True)
        log.info("on_complete %s for %s ran (attempt %d)", record.hook_name, generation_id, claimed)
        return
