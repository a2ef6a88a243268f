"""Ending a generation: durable record first, then the terminal event (same id), then `on_complete`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import events
from shared.errors import SAFE_MESSAGES, ErrorCode
from shared.hooks import GenerationInfo, UnknownHook, call
from shared.ids import next_stream_id
from shared.retry import until_redis_answers
from shared.state import GenerationState, PublishResult, Status
from shared.store.repository import FinalResult, aware
from worker.deps import Deps
from worker.publisher import Publisher, PublishRefused

log = logging.getLogger("sse_relay.worker")
_SAVE_TRIES = 3
# Beyond a hook's timeout: its worker's store write of the outcome, and clocks that differ a little.
_HOOK_MARGIN_S = 2.0


@dataclass(slots=True)
class Ending:
    """How an attempt ends: status, and for errors the code."""

    status: Status
    code: ErrorCode | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


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
    terminal_id = next_stream_id(publisher.last_id, int(time.time() * 1000))
    finished_at = datetime.now(UTC)
    result = FinalResult(
        id=state.id,
        owner=state.owner,
        status=end.status,
        model=state.model,
        text=text,
        reasoning=reasoning or None,
        finish_reason=end.finish_reason,
        usage=end.usage,
        error_code=end.code.value if end.code else None,
        error_message=SAFE_MESSAGES[end.code] if end.code else None,
        metadata=state.metadata,
        terminal_event_id=terminal_id,
        attempts=attempt,
        created_at=_dt(state.created_at) or finished_at,
        started_at=_dt(state.started_at),
        finished_at=finished_at,
        hook_name=state.request.on_complete,
        read_token_sha=state.read_token_sha,
    )
    await _save(deps, result)
    published = await _publish_terminal(publisher, result, text, end)
    if published.outcome != "written":
        return published.outcome
    await until_redis_answers(lambda: deps.generations.release(state.owner, state.id), f"releasing {state.id}")
    if end.status == "done" and state.request.on_complete:
        await run_on_complete(deps, state.id)
    return end.status


async def _save(deps: Deps, result: FinalResult) -> None:
    for attempt in range(1, _SAVE_TRIES + 1):
        try:
            await deps.store.save(result)
            return
        except Exception as exc:
            # The terminal event still goes out: the client gets its answer, Redis keeps it for FINISHED_TTL_S.
            log.error("saving %s failed (try %d): %s", result.id, attempt, type(exc).__name__)
            await asyncio.sleep(0.2 * attempt)


async def _publish_terminal(publisher: Publisher, result: FinalResult, text: str, end: Ending) -> PublishResult:
    if end.status == "done":
        payload = events.done(text, end.finish_reason, end.usage)
        fields = {
            "finish_reason": end.finish_reason or "",
            "usage": json.dumps(end.usage) if end.usage else "",
            "length": str(len(text)),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
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
            await asyncio.wait_for(call(fn, record.text, info), settings.hook_timeout_s)
        except Exception as exc:
            reason = "unknown hook" if isinstance(exc, UnknownHook) else type(exc).__name__
            log.warning(
                "on_complete %s for %s failed (attempt %d): %s", record.hook_name, generation_id, claimed, reason
            )
            await deps.store.finish_hook(generation_id, ok=False, error=reason)
            await asyncio.sleep(min(2.0**claimed * 0.25, 5.0))
            continue
        await deps.store.finish_hook(generation_id, ok=True)
        log.info("on_complete %s for %s ran (attempt %d)", record.hook_name, generation_id, claimed)
        return
