"""Webhook delivery loop (one asyncio task per worker): sends the due deliveries of ended generations, signed.

Rows are written with the generation's record (shared/store/deliveries.py). The worker that publishes the
ending hands the generation to its loop, which claims and sends its rows at once; a poll finds everything else
(retries, rows written by the API or the reaper, rows left by a worker that died). A row is sent only once its
generation's ending is final: an attempt that saved its record and died before publishing its terminal event
is replaced by the next attempt's record, so the message always describes the ending clients saw. Sends run as
tasks of their own, so a slow endpoint holds up neither the loop nor the other endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from standardwebhooks import Webhook

from shared.config import Settings
from shared.state import Generations
from shared.store.deliveries import Claimed, DeliveryStore, Outcome
from shared.store.models import GenerationRecord
from shared.store.repository import ResultStore
from shared.tasks import cancel_and_wait
from shared.webhooks import Endpoint, endpoints, message
from worker import metrics

log = logging.getLogger("sse_relay.worker")

_BATCH = 50
# Sends in flight per worker: past it, due rows wait in the store for the next pass (or another worker).
_MAX_SENDING = 200
# Rows written with a record before its terminal event is published are due after this: normally the worker
# sends them before (claim_fresh), and if it died in between, any worker's poll finds them then.
UNPUBLISHED_GRACE_S = 10.0
# An ending not final yet (its attempt died between record and terminal event): the job's next try settles it.
_NOT_FINAL_WAIT_S = 5.0
_STORE_AWAY_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Ready:
    """A due row's generation: its record once the ending is final, else None (wait)."""

    record: GenerationRecord | None
    gone: bool = False  # no record at all (purged): nothing to send


def backoff_s(settings: Settings, attempt: int) -> float:
    """Wait after failed attempt `attempt` (1-based): doubling from WEBHOOK_RETRY_FIRST_S up to the cap, +-10 %
    so that an endpoint coming back is not hit by every waiting delivery in the same second."""
    base = min(settings.webhook_retry_first_s * 2.0 ** (attempt - 1), settings.webhook_retry_max_s)
    return base * random.uniform(0.9, 1.1)


class Deliverer:
    def __init__(
        self, settings: Settings, deliveries: DeliveryStore, results: ResultStore, generations: Generations
    ) -> None:
        assert settings.webhook_secret is not None or not settings.webhook_urls
        self.settings = settings
        self.deliveries = deliveries
        self.results = results
        self.generations = generations
        self.endpoints = {endpoint.key: endpoint for endpoint in endpoints(settings)}
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        self._signer = Webhook(secret) if secret else None
        self._owner = secrets.token_hex(8)
        # The whole send is bounded by the timeout; the lease outlasts it so no other worker sends meanwhile.
        self._lease = timedelta(seconds=settings.webhook_timeout_s * 2 + 2)
        self._http = httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False)
        self._nudged = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fresh: set[str] = set()
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def targets(self) -> list[Endpoint]:
        return list(self.endpoints.values())

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Sends in flight are cancelled: each has used its attempt, and its lease lets any worker retry it."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        await cancel_and_wait(*self._sending)
        await self._http.aclose()

    def nudge(self) -> None:
        """Rows were written that are due now: look at once rather than at the next poll."""
        self._nudged.set()

    def published(self, generation_id: str) -> None:
        """This worker published the generation's terminal event: its rows are final, send them now."""
        self._fresh.add(generation_id)
        self._nudged.set()

    async def drain(self) -> None:
        """Waits for the sends in flight (tests; a pass only starts them)."""
        while self._sending:
            await asyncio.wait(set(self._sending))

    async def _loop(self) -> None:
        while True:
            self._nudged.clear()
            try:
                sent = await self.run_once()
            except Exception as exc:
                # The store is away: the rows wait in it, and so does this loop.
                log.warning("webhook deliveries: %s; trying again in %.0f s", type(exc).__name__, _STORE_AWAY_WAIT_S)
                await asyncio.sleep(_STORE_AWAY_WAIT_S)
                continue
            if sent >= _BATCH and len(self._sending) < _MAX_SENDING:
                continue  # a backlog: the next batch at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), self.settings.webhook_poll_s)

    async def run_once(self) -> int:
        """One pass: the rows of endings published here, then every due row whose ending is final, are claimed
        and their sends started; -> how many were claimed."""
        fresh, self._fresh = self._fresh, set()
        # One claim and one read for all of them: a burst of endings costs two statements, not two each.
        # If the store fails here, the rows become due after UNPUBLISHED_GRACE_S and the poll sends them.
        claimed = await self.deliveries.claim_fresh(fresh, self._owner, self._lease)
        records = await self.results.get_many({row.generation_id for row in claimed})
        for row in claimed:
            self._start(row, records.get(row.generation_id))
        return len(claimed) + await self._run_due()

    async def _run_due(self) -> int:
        room = min(_BATCH, _MAX_SENDING - len(self._sending))
        due = await self.deliveries.due(room) if room > 0 else []
        ready: dict[str, Ready] = {}
        started = 0
        for row in due:
            if row.generation_id not in ready:
                ready[row.generation_id] = await self._ready(row.generation_id)
            found = ready[row.generation_id]
            if found.record is None and not found.gone:
                await self.deliveries.defer(row.id, datetime.now(UTC) + timedelta(seconds=_NOT_FINAL_WAIT_S))
                continue
            claimed = await self.deliveries.claim(row.id, self._owner, self._lease)
            if claimed is not None:
                self._start(claimed, found.record)
                started += 1
        return started

    def _start(self, claimed: Claimed, record: GenerationRecord | None) -> None:
        task = asyncio.ensure_future(self._attempt_logged(claimed, record))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _attempt_logged(self, claimed: Claimed, record: GenerationRecord | None) -> None:
        try:
            await self._attempt(claimed, record)
        except Exception as exc:
            # Its outcome could not be written (the store went away): the lease lapses and it is tried again.
            log.warning("webhook %s: attempt %d not recorded: %s", claimed.id, claimed.attempt, type(exc).__name__)

    async def _ready(self, generation_id: str) -> Ready:
        record = await self.results.get(generation_id)
        if record is None:
            return Ready(None, gone=True)
        state = await self.generations.get(generation_id)
        # Redis forgot it (FINISHED_TTL_S): the record is all there is. Else the published terminal must be the
        # record's: otherwise the attempt that wrote the record died before publishing, and another follows.
        if state is None or state.terminal_id == record.terminal_event_id:
            return Ready(record)
        return Ready(None)

    async def _attempt(self, claimed: Claimed, record: GenerationRecord | None) -> None:
        endpoint = self.endpoints.get(claimed.endpoint_key)
        if record is None or endpoint is None or self._signer is None:
            # Purged, or its endpoint was removed from WEBHOOK_URLS since: nowhere to send it.
            reason = "generation purged" if record is None else "endpoint no longer configured"
            await self._settle(claimed, Outcome(False, None, reason), "failed")
            return
        outcome = await self._send(claimed, record, endpoint)
        if outcome.delivered:
            await self._settle(claimed, outcome, "delivered")
        elif claimed.attempt < self.settings.webhook_max_attempts:
            wait = backoff_s(self.settings, claimed.attempt)
            retry_at = datetime.now(UTC) + timedelta(seconds=wait)
            retry = Outcome(False, outcome.status_code, outcome.error, retry_at)
            log.info(
                "webhook %s to %s: attempt %d failed (%s); next in %.1f s",
                claimed.id, endpoint.host, claimed.attempt, outcome.error, wait,
            )  # fmt: skip
            await self._settle(claimed, retry, "retried")
        else:
            log.warning(
                "webhook %s to %s: attempt %d failed (%s); giving up",
                claimed.id, endpoint.host, claimed.attempt, outcome.error,
            )  # fmt: skip
            await self._settle(claimed, outcome, "failed")

    async def _send(self, claimed: Claimed, record: GenerationRecord, endpoint: Endpoint) -> Outcome:
        assert self._signer is not None
        body = json.dumps(message(record, self.settings.webhook_include_text), ensure_ascii=False)
        # Signed now, at each attempt: receivers reject a timestamp more than minutes away from theirs.
        sent_at = int(datetime.now(UTC).timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": claimed.id,
            "webhook-timestamp": str(sent_at),
            "webhook-signature": self._signer.sign(claimed.id, datetime.fromtimestamp(sent_at, UTC), body),
        }
        try:
            async with (
                asyncio.timeout(self.settings.webhook_timeout_s),
                # Streamed and never read: only the status counts, and a receiver's body could be any size.
                self._http.stream("POST", endpoint.url, content=body.encode(), headers=headers) as response,
            ):
                pass
        except TimeoutError:
            return Outcome(False, None, "timeout")
        except httpx.HTTPError as exc:
            # The class only: an httpx message may quote the URL, which may hold a token.
            return Outcome(False, None, type(exc).__name__)
        if 200 <= response.status_code < 300:
            log.info("webhook %s delivered to %s (attempt %d)", claimed.id, endpoint.host, claimed.attempt)
            return Outcome(True, response.status_code, None)
        return Outcome(False, response.status_code, f"HTTP {response.status_code}")

    async def _settle(self, claimed: Claimed, outcome: Outcome, counted: str) -> None:
        if await self.deliveries.settle(claimed, self._owner, outcome):
            metrics.WEBHOOK_DELIVERIES.labels(outcome=counted).inc()
