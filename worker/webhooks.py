"""Webhook delivery loop (one asyncio task per worker): sends the due deliveries of ended generations, signed.

Rows are written with the generation's record (shared/store/deliveries.py); a finished job nudges the loop,
and a poll finds everything else (retries, rows left by a worker that died). A row is sent only once its
generation's ending is final: an attempt that saved its record and died before publishing its terminal event
is replaced by the next attempt's record, so the message always describes the ending clients saw.
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

    @property
    def targets(self) -> list[Endpoint]:
        return list(self.endpoints.values())

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self._http.aclose()

    def nudge(self) -> None:
        """A generation ended here: look for its deliveries now rather than at the next poll."""
        self._nudged.set()

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
            if sent >= _BATCH:
                continue  # a backlog: the next batch at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), self.settings.webhook_poll_s)

    async def run_once(self) -> int:
        """One pass: every due row whose ending is final is claimed and sent; -> how many were claimed."""
        due = await self.deliveries.due(_BATCH)
        ready: dict[str, Ready] = {}
        sends = []
        for row in due:
            if row.generation_id not in ready:
                ready[row.generation_id] = await self._ready(row.generation_id)
            found = ready[row.generation_id]
            if found.record is None and not found.gone:
                await self.deliveries.defer(row.id, datetime.now(UTC) + timedelta(seconds=_NOT_FINAL_WAIT_S))
                continue
            claimed = await self.deliveries.claim(row.id, self._owner, self._lease)
            if claimed is not None:
                sends.append(self._attempt(claimed, found.record))
        await asyncio.gather(*sends)
        return len(sends)

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
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                response = await self._http.post(endpoint.url, content=body.encode(), headers=headers)
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
