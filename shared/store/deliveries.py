"""Webhook delivery rows: created with a generation's record, claimed by one worker at a time, kept until sent.

A claim is a conditional UPDATE (pending, due, not leased by a live sender), so several workers may scan the
same rows on SQLite or PostgreSQL and each row still goes out once per attempt.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Table, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.store.db import sessions
from shared.store.models import WebhookDelivery
from shared.webhooks import Endpoint, message_id


@dataclass(frozen=True, slots=True)
class Due:
    id: str
    generation_id: str


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    generation_id: str
    endpoint_key: str
    endpoint_host: str
    attempt: int  # this attempt's number, from 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt went: delivered, or when to try again (None: give up)."""

    delivered: bool
    status_code: int | None
    error: str | None
    retry_at: datetime | None = None


def _now() -> datetime:
    return datetime.now(UTC)


async def add(session: AsyncSession, generation_id: str, targets: Sequence[Endpoint], due_in: float = 0.0) -> None:
    """In the caller's transaction: one pending row per endpoint, due in `due_in` seconds; a row that exists
    already stays as it is."""
    if not targets:
        return
    now = _now()
    rows = [
        {
            "id": message_id(generation_id, target),
            "generation_id": generation_id,
            "endpoint_key": target.key,
            "endpoint_host": target.host[:255],
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now + timedelta(seconds=due_in),
            "created_at": now,
        }
        for target in targets
    ]
    bind = session.get_bind()
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    table: Table = WebhookDelivery.__table__  # type: ignore[assignment]
    await session.execute(insert(table).values(rows).on_conflict_do_nothing())


def _unleased(now: datetime) -> ColumnElement[bool]:
    return or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now)


class DeliveryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = sessions(engine)

    async def due(self, limit: int) -> list[Due]:
        now = _now()
        statement = (
            select(WebhookDelivery.id, WebhookDelivery.generation_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now, _unleased(now))
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [Due(row.id, row.generation_id) for row in await session.execute(statement)]

    async def defer(self, delivery_id: str, until: datetime) -> None:
        """Not sendable yet (its generation's ending is not final): look again later, no attempt counted."""
        statement = (
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, _unleased(_now()))
            .values(next_attempt_at=until)
        )
        async with self._sessions.begin() as session:
            await session.execute(statement)

    async def claim_fresh(self, generation_ids: Collection[str], owner: str, lease: timedelta) -> list[Claimed]:
        """The rows not tried yet of generations whose worker has just published their ending, whenever they
        are due; one statement for a whole burst of endings."""
        if not generation_ids:
            return []
        now = _now()
        row = WebhookDelivery
        statement = (
            update(row)
            .where(row.generation_id.in_(list(generation_ids)), row.status == "pending", row.attempts == 0)
            .where(_unleased(now))
            .values(lease_until=now + lease, lease_owner=owner, attempts=row.attempts + 1)
            .returning(row.id, row.generation_id, row.endpoint_key, row.endpoint_host, row.attempts)
        )
        async with self._sessions.begin() as session:
            found = (await session.execute(statement)).all()
        return [Claimed(r.id, r.generation_id, r.endpoint_key, r.endpoint_host, int(r.attempts)) for r in found]

    async def claim(self, delivery_id: str, owner: str, lease: timedelta) -> Claimed | None:
        """The right to make the next attempt, held until the lease lapses; counts the attempt at once (a
        worker killed mid-send has used it)."""
        now = _now()
        row = WebhookDelivery
        statement = (
            update(row)
            .where(row.id == delivery_id, row.status == "pending", row.next_attempt_at <= now, _unleased(now))
            .values(lease_until=now + lease, lease_owner=owner, attempts=row.attempts + 1)
            .returning(row.id, row.generation_id, row.endpoint_key, row.endpoint_host, row.attempts)
        )
        async with self._sessions.begin() as session:
            found = (await session.execute(statement)).one_or_none()
        if found is None:
            return None
        return Claimed(found.id, found.generation_id, found.endpoint_key, found.endpoint_host, int(found.attempts))

    async def settle(self, claimed: Claimed, owner: str, outcome: Outcome) -> bool:
        """Writes an attempt's outcome, if this worker still holds the row; -> whether it did."""
        values: dict[str, object] = {
            "lease_until": None,
            "lease_owner": None,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error[:200] if outcome.error else None,
        }
        if outcome.delivered:
            values.update(status="delivered", delivered_at=_now())
        elif outcome.retry_at is not None:
            values.update(next_attempt_at=outcome.retry_at)
        else:
            values.update(status="failed")
        statement = (
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claimed.id, WebhookDelivery.lease_owner == owner)
            .values(**values)
        )
        async with self._sessions.begin() as session:
            result = await session.execute(statement)
        return bool(getattr(result, "rowcount", 0))

    async def of_generation(self, generation_id: str) -> list[WebhookDelivery]:
        statement = (
            select(WebhookDelivery)
            .where(WebhookDelivery.generation_id == generation_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.endpoint_host, WebhookDelivery.id)
        )
        async with self._sessions() as session:
            return list((await session.execute(statement)).scalars())
