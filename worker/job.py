"""The generation job: claim an attempt under a lease, stream from the provider, end with one terminal event."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from arq import Retry

from shared import events
from shared.errors import ErrorCode
from shared.hooks import call
from shared.jobs import StoredRequest
from shared.retry import TRANSIENT, until_redis_answers
from shared.state import GenerationState
from shared.tasks import cancel_and_wait
from worker.completion import Ending, finish, run_on_complete
from worker.deps import Deps
from worker.publisher import Publisher, PublishRefused
from worker.upstream import Opening, Outcome, UpstreamError, stream_pieces

log = logging.getLogger("sse_relay.worker")

# Leave room to publish the terminal event before arq's own job timeout cancels us.
_TIMEOUT_MARGIN_S = 5.0


class CancelRequested(Exception):
    """A caller asked to cancel; raised in the job when the watcher sees the flag."""


async def run_generation(ctx: dict[str, Any], generation_id: str, request_json: str | None = None) -> dict[str, str]:
    """arq entry point. Returns a plain dict: no exception object ever reaches an arq result.

    `request_json`: the request as stored with the generation, carried by the job so that the provider call
    can start while the claim is on its way (jobs enqueued without it use the stored one).
    """
    deps: Deps = ctx["deps"]
    job_try = int(ctx.get("job_try", 1))
    early = None
    if request_json is not None and job_try <= deps.settings.job_max_tries:
        early = Opening(deps.client, StoredRequest.model_validate_json(request_json))
    # The lease was set when the job was taken (worker/pickup.py) and is renewed until arq is done with it.
    try:
        status = await _run(deps, generation_id, job_try, early)
    finally:
        if early is not None:
            await early.discard()  # a no-op once the attempt has read the stream to its end
    if status == "stale":
        # A newer attempt runs elsewhere (this one's lease lapsed). Keep the arq job queued, deferred past a
        # lease renewal, so that it stays the newer attempt's crash insurance instead of being deleted.
        raise Retry(defer=deps.settings.job_lease_s * 2)
    return {"status": status}


async def _run(deps: Deps, generation_id: str, job_try: int, early: Opening | None) -> str:
    # Repeating a claim whose reply was lost only skips an attempt number.
    claim = await until_redis_answers(lambda: deps.generations.claim(generation_id), f"claiming {generation_id}")
    if claim.outcome == "terminal":
        # Finished by an earlier attempt (or cancelled while queued): only a hook may still be owed. A hook
        # runs under its job's lease; this job running again means that lease lapsed, so a `running` claim
        # older than the time from a renewal to the lease's end (>= 2/3 of it; half, for clock skew) was
        # made by a worker that is gone.
        lapsed = timedelta(seconds=deps.settings.job_lease_s / 2) if job_try > 1 else None
        await run_on_complete(deps, generation_id, lapsed)
        return "terminal"
    state = claim.state
    if state is None:
        log.info("generation %s not started: %s", generation_id, claim.outcome)
        return "missing"
    attempt = Attempt(deps, state, claim.attempt, early)
    if job_try > deps.settings.job_max_tries:
        # The earlier tries died with their workers (lease lost each time): end it for good.
        return await attempt.end(Ending("error", ErrorCode.WORKER_LOST))
    return await attempt.run(claim.had_output)


class Attempt:
    """One attempt of one generation."""

    def __init__(self, deps: Deps, state: GenerationState, attempt: int, opening: Opening | None = None) -> None:
        self.deps = deps
        self.opening = opening
        self.state = state
        self.attempt = attempt
        self.context = state.request.error_context or "-"
        window = deps.settings.coalesce_ms / 1000
        self.publisher = Publisher(deps.generations, state.id, attempt, window)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.outcome = Outcome()
        self.on_content = deps.hooks.hooks.get(state.request.on_content or "")

    async def run(self, had_output: bool) -> str:
        try:
            if had_output:
                # An earlier attempt published text; clients must discard it before this attempt's text.
                await self.publisher.publish(events.reset(self.attempt, "retry"))
            await self._stream_with_watch()
        except PublishRefused as refused:
            log.info("generation %s attempt %d stopped: %s", self.state.id, self.attempt, refused.result.outcome)
            return refused.result.outcome
        except CancelRequested:
            return await self.end(Ending("cancelled", ErrorCode.CANCELLED))
        except UpstreamError as exc:
            log.warning("generation %s [%s] upstream failure %s: %s", self.state.id, self.context, exc.code, exc.detail)
            return await self.end(Ending("error", exc.code))
        except TimeoutError:
            return await self.end(Ending("error", ErrorCode.UPSTREAM_TIMEOUT))
        except asyncio.CancelledError:
            raise  # worker shutdown or arq timeout: arq retries, and the next attempt starts with `reset`
        except Exception as exc:
            log.exception("generation %s [%s] failed: %s", self.state.id, self.context, type(exc).__name__)
            return await self.end(Ending("error", ErrorCode.INTERNAL))
        finally:
            self.publisher.close()
        ending = Ending("done", finish_reason=self.outcome.finish_reason, usage=self.outcome.usage)
        return await self.end(ending)

    async def end(self, ending: Ending) -> str:
        text, reasoning = "".join(self.text), "".join(self.reasoning)
        outcome = await finish(self.deps, self.state, self.attempt, self.publisher, text, reasoning, ending)
        log.info("generation %s [%s] ended %s: %d chars", self.state.id, self.context, outcome, len(text))
        return outcome

    async def _stream_with_watch(self) -> None:
        deadline = max(1.0, self.deps.settings.job_timeout_s - _TIMEOUT_MARGIN_S)
        pump = asyncio.ensure_future(self._pump())
        watch = asyncio.ensure_future(self._watch_cancel())
        try:
            async with asyncio.timeout(deadline):
                done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelling `pump` closes the upstream response (the stream is used with `async with`).
            await cancel_and_wait(pump, watch)
        finished = pump if pump in done else watch
        finished.result()  # a finished task keeps its outcome: re-raises the pump's error or CancelRequested

    async def _pump(self) -> None:
        opening = self.opening or Opening(self.deps.client, self.state.request)
        self.opening = opening
        async for piece in stream_pieces(opening, self.outcome):
            (self.text if piece.kind == "content" else self.reasoning).append(piece.text)
            await self.publisher.add(piece.kind, piece.text)
            if self.publisher.cancel_requested:
                raise CancelRequested
            if self.on_content is not None and piece.kind == "content":
                await self._on_content(piece.text)

    async def _on_content(self, chunk: str) -> None:
        assert self.on_content is not None
        try:
            await call(self.on_content, chunk)
        except Exception as exc:  # a hook never fails the generation
            log.warning("on_content for %s failed: %s", self.state.id, type(exc).__name__)

    async def _watch_cancel(self) -> None:
        # Every write's reply carries the cancel flag; polling only covers a provider that has gone quiet.
        interval = self.deps.settings.cancel_poll_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if loop.time() - self.publisher.last_write_at < interval:
                continue
            try:
                requested = await self.deps.generations.cancel_requested(self.state.id)
            except TRANSIENT:
                continue  # Redis is away: the writes are waiting for it too
            if requested:
                raise CancelRequested
