"""The generation job: claim an attempt, stream from the provider into the publisher, end with one terminal event."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import openai

from shared import events
from shared.config import Settings
from shared.errors import ErrorCode
from shared.state import Generations, Status
from worker.publisher import Publisher, PublishRefused
from worker.upstream import Outcome, UpstreamError, stream_pieces

log = logging.getLogger("sse_relay.worker")

# Leave room to publish the terminal event before arq's own job timeout cancels us.
_TIMEOUT_MARGIN_S = 5.0


@dataclass(slots=True)
class Deps:
    """What a job needs from its worker process (built once at start-up, see worker.main)."""

    settings: Settings
    generations: Generations
    client: openai.AsyncOpenAI


class CancelRequested(Exception):
    """A caller asked to cancel; raised in the job when the watcher sees the flag."""


async def run_generation(ctx: dict[str, Any], generation_id: str) -> dict[str, str]:
    """arq entry point. Returns a plain dict: no exception object ever reaches an arq result."""
    deps: Deps = ctx["deps"]
    claim = await deps.generations.claim(generation_id)
    if claim.outcome != "ok":
        log.info("generation %s not started: %s", generation_id, claim.outcome)
        return {"status": claim.outcome}
    state = await deps.generations.get(generation_id)
    if state is None:
        return {"status": "missing"}
    runner = _Run(deps, generation_id, claim.attempt, state.request.error_context)
    return {"status": await runner.run(state.request, claim.had_output)}


class _Run:
    """One attempt of one generation."""

    def __init__(self, deps: Deps, generation_id: str, attempt: int, error_context: str | None) -> None:
        self.deps = deps
        self.id = generation_id
        self.attempt = attempt
        self.context = error_context or "-"
        self.publisher = Publisher(deps.generations, generation_id, attempt, deps.settings.coalesce_ms / 1000)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.outcome = Outcome()

    async def run(self, request: Any, had_output: bool) -> str:
        try:
            if had_output:
                # An earlier attempt published text; clients must discard it before this attempt's text.
                await self.publisher.publish(events.reset(self.attempt, "retry"))
            await self._stream_with_watch(request)
        except PublishRefused as refused:
            log.info("generation %s attempt %d stopped: %s", self.id, self.attempt, refused.result.outcome)
            return refused.result.outcome
        except CancelRequested:
            return await self._fail(ErrorCode.CANCELLED, "cancelled by a caller", status="cancelled")
        except UpstreamError as exc:
            return await self._fail(exc.code, exc.detail)
        except TimeoutError:
            return await self._fail(ErrorCode.UPSTREAM_TIMEOUT, "job deadline reached")
        except asyncio.CancelledError:
            raise  # worker shutdown or arq timeout: arq retries, and the next attempt starts with `reset`
        except Exception as exc:
            log.exception("generation %s [%s] failed unexpectedly: %s", self.id, self.context, type(exc).__name__)
            return await self._fail(ErrorCode.INTERNAL, type(exc).__name__)
        finally:
            self.publisher.close()
        return await self._succeed()

    async def _stream_with_watch(self, request: Any) -> None:
        deadline = max(1.0, self.deps.settings.job_timeout_s - _TIMEOUT_MARGIN_S)
        pump = asyncio.ensure_future(self._pump(request))
        watch = asyncio.ensure_future(self._watch_cancel())
        try:
            async with asyncio.timeout(deadline):
                done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            # Cancelling `pump` closes the upstream response (the stream is used with `async with`).
            await asyncio.gather(pump, watch, return_exceptions=True)
        finished = pump if pump in done else watch
        finished.result()  # re-raises the pump's error or CancelRequested

    async def _pump(self, request: Any) -> None:
        async for piece in stream_pieces(self.deps.client, request, self.outcome):
            (self.text if piece.kind == "content" else self.reasoning).append(piece.text)
            await self.publisher.add(piece.kind, piece.text)
            if self.publisher.cancel_requested:
                raise CancelRequested

    async def _watch_cancel(self) -> None:
        # Polling covers a provider that is silent (no writes, so no cancel flag riding back on replies).
        while not await self.deps.generations.cancel_requested(self.id):  # noqa: ASYNC110 - the flag is in Redis
            await asyncio.sleep(self.deps.settings.cancel_poll_s)
        raise CancelRequested

    async def _succeed(self) -> str:
        text = "".join(self.text)
        fields = {
            "finish_reason": self.outcome.finish_reason or "",
            "usage": json.dumps(self.outcome.usage) if self.outcome.usage else "",
            "length": str(len(text)),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        payload = events.done(text, self.outcome.finish_reason, self.outcome.usage)
        result = await self.publisher.finish(payload, "done", fields)
        log.info("generation %s [%s] done: %d chars, %s", self.id, self.context, len(text), result.outcome)
        return "done" if result.outcome == "written" else result.outcome

    async def _fail(self, code: ErrorCode, detail: str, status: Status = "error") -> str:
        log.warning("generation %s [%s] ended with %s: %s", self.id, self.context, code.value, detail)
        result = await self.publisher.finish(events.error(code), status, {"error_code": code.value})
        return status if result.outcome == "written" else result.outcome
