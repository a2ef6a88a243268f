"""The generation job: claim an attempt under a lease, stream from the provider, end with one terminal event."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from arq import Retry
from redis.exceptions import RedisError

from shared import events, tracing
from shared.errors import ErrorCode
from shared.metrics import RESETS
from shared.retry import TRANSIENT, until_redis_answers
from shared.state import Claim, GenerationState
from shared.tasks import cancel_and_wait
from shared.webhooks import endpoints
from worker import metrics
from worker.completion import Ending, finish, run_on_complete
from worker.deps import Deps
from worker.publisher import Publisher, PublishRefused
from worker.upstream import Outcome, UpstreamError, stream_pieces

log = logging.getLogger("sse_relay.worker")

# Leave room to publish the terminal event before arq's own job timeout cancels us.
_TIMEOUT_MARGIN_S = 5.0


def _log_hook_failure(generation_id: str, call: asyncio.Future[None]) -> None:
    if not call.cancelled() and call.exception() is not None:
        log.warning("on_content for %s failed: %s", generation_id, type(call.exception()).__name__)


class CancelRequested(Exception):
    """A caller asked to cancel; raised in the job when the watcher sees the flag."""


async def run_generation(
    ctx: dict[str, Any], generation_id: str, trace: dict[str, str] | None = None
) -> dict[str, str]:
    """arq entry point. Returns a plain dict: no exception object ever reaches an arq result.

    Every way out ends the generation or leaves the arq job queued for another try (`Retry`): arq deletes a
    job that raises anything else, and nothing would then end its generation but the reaper's minute-ly pass.
    `trace`: the enqueuing request's trace context, the parent of this job's span.
    """
    attributes = {"sse_relay.generation_id": generation_id}
    # Taken, and its provider request sent, before arq ran the job (worker/early.py): the job began then.
    deps: Deps = ctx["deps"]
    sent_ns = deps.early.sent_at(generation_id)
    with tracing.span("sse_relay.generation", "CONSUMER", attributes, parent=trace, start_ns=sent_ns) as current:
        result = await _run_job(ctx, generation_id)
        tracing.set_attributes(current, {"sse_relay.outcome": result["status"]})
        return result


async def _run_job(ctx: dict[str, Any], generation_id: str) -> dict[str, str]:
    deps: Deps = ctx["deps"]
    retry_later = Retry(defer=deps.settings.job_lease_s * 2)
    try:
        # Our own deadline, inside arq's (worker/main.py gives arq a margin): arq's would delete the job.
        async with asyncio.timeout(deps.settings.job_timeout_s):
            # The lease was set when the job was taken (worker/pickup.py) and is renewed until arq is done.
            status = await _run(deps, generation_id, ctx.get("claims", {}))
    except Retry:
        raise
    except TimeoutError:
        # Not ended in time (the store or Redis stayed away while it finished): the next try finds it ended
        # (then only a hook may be owed) or runs it again.
        log.warning("generation %s: job timed out; it stays queued", generation_id)
        raise retry_later from None
    except Exception as exc:
        # Redis refused a write (READONLY after a failover, OOM, a script error), or the store failed after the
        # terminal event: the same, later. A failure that persists uses up the tries and ends `worker_lost`.
        log.error("generation %s: job failed: %s; it stays queued", generation_id, _name(exc))
        raise retry_later from None
    if status == "stale":
        metrics.LEASES_LOST.inc()
        # A newer attempt runs elsewhere (this one's lease lapsed). Keep the arq job queued, deferred past a
        # lease renewal, so that it stays the newer attempt's crash insurance instead of being deleted.
        raise retry_later
    return {"status": status}


def _name(exc: BaseException) -> str:
    # The class and, for Redis, its reply's first word (READONLY, OOM): never the message of an SDK error.
    first = str(exc).split(" ", 1)[0] if isinstance(exc, RedisError) else ""
    return f"{type(exc).__name__} {first}".strip()


async def _run(deps: Deps, generation_id: str, claims: dict[str, Claim]) -> str:
    # Claimed when the job was taken (worker/pickup.py), or now. The state's attempt, counted by each claim, is
    # the one count of tries (arq's job_try only backs it up: arq's max_tries is one more). A claim whose reply
    # was lost, and is repeated, counts as a try.
    claim = claims.pop(generation_id, None)
    if claim is None:
        claim = await until_redis_answers(lambda: deps.generations.claim(generation_id), f"claiming {generation_id}")
    if claim.outcome == "terminal":
        # Finished by an earlier attempt (or cancelled while queued, attempt 0): only a hook may still be owed.
        # Running after an attempt means that attempt's lease lapsed: its worker is likely gone, maybe mid-hook.
        await _ensure_webhooks(deps, generation_id)
        await run_on_complete(deps, generation_id, after_lapse=claim.attempt > 0)
        return "terminal"
    state = claim.state
    if state is None:
        log.info("generation %s not started: %s", generation_id, claim.outcome)
        return "missing"
    if claim.attempt == 1:
        metrics.observe_queue_wait(state.created_at)
    else:
        metrics.RETRIED_ATTEMPTS.inc()
    attempt = Attempt(deps, state, claim.attempt)
    if state.cancel_requested:
        # Cancelled while no worker ran it (its worker died): end it without calling the provider again.
        return await attempt.end(Ending("cancelled", ErrorCode.CANCELLED))
    if claim.attempt > deps.settings.job_max_tries:
        # The earlier tries died with their workers (lease lost each time): end it for good.
        return await attempt.end(Ending("error", ErrorCode.WORKER_LOST))
    return await attempt.run(claim.had_output)


async def _ensure_webhooks(deps: Deps, generation_id: str) -> None:
    # A generation cancelled while queued was recorded by the API, which may not know WEBHOOK_URLS.
    targets = endpoints(deps.settings)
    if targets:
        await deps.store.ensure_webhooks(generation_id, targets)
        deps.webhooks_written()


class Attempt:
    """One attempt of one generation."""

    def __init__(self, deps: Deps, state: GenerationState, attempt: int) -> None:
        self.deps = deps
        self.state = state
        self.attempt = attempt
        self.context = state.request.error_context or "-"
        min_interval = deps.settings.coalesce_ms / 1000
        self.publisher = Publisher(deps.generations, state.id, attempt, min_interval)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.outcome = Outcome()
        self.on_content = deps.hooks.hooks.get(state.request.on_content or "")
        self._hook_call: asyncio.Future[None] | None = None
        self._held: list[str] = []
        self._first_piece_due = False  # True while the generation's first piece ever is still to come (TTFT)

    async def run(self, had_output: bool) -> str:
        self._first_piece_due = not had_output
        try:
            if had_output:
                # An earlier attempt published text; clients must discard it before this attempt's text.
                await self.publisher.publish(events.reset(self.attempt, "retry"))
                RESETS.labels("retry").inc()
            await self._stream_provider()
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
            self.publisher.abandon()
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
        with tracing.span("sse_relay.terminal", attributes={"sse_relay.status": ending.status}) as current:
            outcome = await finish(self.deps, self.state, self.attempt, self.publisher, text, reasoning, ending)
            if ending.code is not None:
                tracing.mark_error(current, ending.code.value)
        log.info("generation %s [%s] ended %s: %d chars", self.state.id, self.context, outcome, len(text))
        return outcome

    async def _stream_provider(self) -> None:
        """The provider call, as one client span (the SDK's HTTP library is not the instrumented httpx)."""
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": self.state.request.model}
        sent_ns = self.deps.early.sent_at(self.state.id)  # the call began when its request went out
        with tracing.span("chat " + self.state.request.model, "CLIENT", attributes, start_ns=sent_ns) as current:
            try:
                await self._stream_with_watch()
            except UpstreamError as exc:
                tracing.mark_error(current, exc.code.value)
                raise
            tracing.set_attributes(current, {"sse_relay.pieces": len(self.text) + len(self.reasoning)})

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
        opening = self.deps.early.take(self.state.id)
        async for piece in stream_pieces(self.deps.client, self.state.request, self.outcome, opening):
            if self._first_piece_due:
                self._first_piece_due = False
                metrics.observe_ttft(self.state.created_at)
            (self.text if piece.kind == "content" else self.reasoning).append(piece.text)
            self.publisher.add(piece.kind, piece.text)
            if self.publisher.cancel_requested:
                raise CancelRequested
            if self.on_content is not None and piece.kind == "content":
                await self._on_content(piece.text)

    async def _on_content(self, chunk: str) -> None:
        """One call at a time per generation, each bounded by ON_CONTENT_TIMEOUT_S. A call past it is left to
        finish (a thread cannot be stopped) and the stream goes on; pieces arriving until it returns are held and
        passed together in the next call. So a stuck hook holds at most one hook thread per generation."""
        assert self.on_content is not None
        self._held.append(chunk)
        if self._hook_call is not None and not self._hook_call.done():
            return
        text, self._held = "".join(self._held), []
        call = asyncio.ensure_future(self.deps.hook_threads.call(self.on_content, text))
        call.add_done_callback(partial(_log_hook_failure, self.state.id))
        self._hook_call = call
        timeout = self.deps.settings.on_content_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(call), timeout)
        except TimeoutError:
            metrics.HOOK_CALLS.labels("on_content", "timeout").inc()
            log.warning("on_content for %s: still running after %.1f s; the stream goes on", self.state.id, timeout)
        except Exception:
            metrics.HOOK_CALLS.labels("on_content", "error").inc()
            return  # logged by _log_hook_failure: a hook never fails the generation
        else:
            metrics.HOOK_CALLS.labels("on_content", "ok").inc()

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
